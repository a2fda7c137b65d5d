//! The command recorder every wgpu op goes through: one command encoder shared by all clones of a device, so
//! work stays in call order; the parameter blocks and host uploads of one submission staged in one host arena
//! and written with one `write_buffer`; bind groups cached for devices that defer their submissions; a
//! persistent readback buffer; and counters a test can read.
//!
//! A device records each op's dispatches into the shared encoder. An immediate device (the default) submits at
//! the end of each op, so a framework that shares the queue sees the work submitted when the call returns. A
//! deferred device ([`Wgpu::defer_submissions`], the training engine's) leaves the encoder open: the work goes
//! out at the next read, [`Wgpu::flush`] or synchronisation, so a training step is one submission.

use super::Wgpu;
use crate::error::{Error, Result};
use std::collections::HashMap;

/// What a device has done since it was opened (shared by its clones): for tests and profiles.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WgpuCounters {
    /// Command buffers submitted to the queue.
    pub submissions: u64,
    /// Compute dispatches recorded.
    pub dispatches: u64,
    /// Buffers created through the device (allocations, scratch, the arena, the readback buffer).
    pub buffers: u64,
    /// Bind groups created (a deferred device's cached ones are created once).
    pub bind_groups: u64,
}

/// One binding of a cached bind group: binding number, buffer, byte offset and size.
type BindingKey = (u32, wgpu::Buffer, u64, u64);

/// A bind group's identity: the pipeline and every binding (the parameter block's included).
type BindKey = (wgpu::ComputePipeline, Vec<BindingKey>);

/// Bind groups a deferred device keeps; the cache is emptied when it reaches this many (a step of the v2 ResNet
/// engine uses a few hundred).
const BIND_GROUP_CACHE_MAX: usize = 4096;

/// The smallest arena: a step's parameter blocks fit several times over.
const ARENA_MIN_BYTES: u64 = 1 << 16;

/// `queue.write_buffer` and buffer copies move multiples of 4 bytes at offsets that are multiples of 4.
const COPY_ALIGN: u64 = wgpu::COPY_BUFFER_ALIGNMENT;

#[derive(Default)]
pub(crate) struct Recorder {
    /// The open command encoder: commands recorded since the last submission.
    encoder: Option<wgpu::CommandEncoder>,
    /// The open submission's parameter blocks and uploads, written to `arena` at its offsets before the submit.
    host: Vec<u8>,
    /// `UNIFORM | COPY_SRC | COPY_DST`: parameter blocks are bound from it, uploads copied from it.
    arena: Option<wgpu::Buffer>,
    /// A deferred device's bind groups, by pipeline and bindings.
    bind_groups: HashMap<BindKey, wgpu::BindGroup>,
    /// `MAP_READ | COPY_DST`, grown to the largest read.
    readback: Option<wgpu::Buffer>,
    pub(crate) counters: WgpuCounters,
    /// GPU timestamps around every dispatch, while a profile runs.
    pub(crate) profiler: Option<Profiler>,
}

/// Dispatches a profile times per submission: two timestamps each fill one query set.
const PROFILED_PER_SUBMISSION: u32 = wgpu::QUERY_SET_MAX_QUERIES / 2;

/// Timestamps at the start and end of each dispatch's compute pass, by the scope the dispatch was recorded in
/// ([`Wgpu::profile_scope`]): resolved and read back at each submission (profiling waits for the GPU there).
pub(crate) struct Profiler {
    queries: wgpu::QuerySet,
    /// `QUERY_RESOLVE | COPY_SRC`: the resolved ticks, `[2 * dispatches]` u64.
    resolved: wgpu::Buffer,
    /// `MAP_READ | COPY_DST`: their copy on the host side.
    host: wgpu::Buffer,
    /// The scope of each dispatch recorded in the open submission.
    pending: Vec<usize>,
    /// The scope dispatches are recorded in now (an index into `rows`).
    pub(crate) scope: usize,
    /// Per scope, in order of first use: name, GPU nanoseconds, dispatches.
    pub(crate) rows: Vec<(String, f64, u64)>,
}

impl Profiler {
    pub(crate) fn new(ctx: &Wgpu) -> Self {
        let n = u64::from(2 * PROFILED_PER_SUBMISSION);
        Self {
            queries: ctx.device().create_query_set(&wgpu::QuerySetDescriptor { label: Some("moco profile"), ty: wgpu::QueryType::Timestamp, count: 2 * PROFILED_PER_SUBMISSION }),
            resolved: ctx.create_buffer("moco profile resolved", 8 * n, wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC),
            host: ctx.create_buffer("moco profile readback", 8 * n, wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST),
            pending: Vec::new(),
            scope: 0,
            rows: vec![("(unscoped)".to_string(), 0.0, 0)],
        }
    }

    /// Makes `name` the scope of the dispatches recorded from now on.
    pub(crate) fn enter(&mut self, name: &str) {
        self.scope = match self.rows.iter().position(|r| r.0 == name) {
            Some(i) => i,
            None => {
                self.rows.push((name.to_string(), 0.0, 0));
                self.rows.len() - 1
            }
        };
    }
}

impl Profiler {
    /// Waits for the submission just made, and adds its `timed` dispatches' GPU times to their scopes.
    fn collect(&mut self, ctx: &Wgpu, timed: u64) -> Result<()> {
        let words = map_read(ctx, &self.host, 16 * timed)?;
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&words);
        let period = f64::from(ctx.queue().get_timestamp_period());
        for (scope, t) in self.pending.drain(..).zip(ticks.chunks_exact(2)) {
            let row = &mut self.rows[scope];
            row.1 += t[1].saturating_sub(t[0]) as f64 * period;
            row.2 += 1;
        }
        Ok(())
    }
}

/// The first `size` bytes of a `MAP_READ` buffer, after waiting for the work submitted so far.
fn map_read(ctx: &Wgpu, buf: &wgpu::Buffer, size: u64) -> Result<Vec<u8>> {
    let slice = buf.slice(..size);
    let (tx, rx) = std::sync::mpsc::channel();
    slice.map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    ctx.device().poll(wgpu::PollType::wait_indefinitely()).map_err(|e| Error::Wgpu(format!("poll: {e}")))?;
    rx.recv().map_err(|e| Error::Wgpu(format!("map_async: {e}")))?.map_err(|e| Error::Wgpu(format!("map_async: {e}")))?;
    let data = slice.get_mapped_range().map_err(|e| Error::Wgpu(format!("map: {e}")))?.to_vec();
    buf.unmap();
    Ok(data)
}

impl Recorder {
    /// The open encoder, created when none is.
    pub(crate) fn encoder(&mut self, ctx: &Wgpu) -> &mut wgpu::CommandEncoder {
        self.encoder.get_or_insert_with(|| ctx.device().create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("moco") }))
    }

    /// Whether commands are recorded and not yet submitted.
    pub(crate) fn pending(&self) -> bool {
        self.encoder.is_some()
    }

    fn arena_size(&self) -> u64 {
        self.arena.as_ref().map_or(0, |a| a.size())
    }

    /// Reserves `bytes` of the arena at an offset aligned to `align` and copies `data` there (zero-padded to
    /// `bytes`). When the open submission's arena is full, submits it first and grows the arena as needed.
    /// Returns the arena and the offset.
    fn stage(&mut self, ctx: &Wgpu, data: &[u8], bytes: u64, align: u64) -> Result<(wgpu::Buffer, u64)> {
        let mut offset = (self.host.len() as u64).div_ceil(align) * align;
        if offset + bytes > self.arena_size() {
            // the open submission outgrew the arena: submit what it holds, and grow the arena so that a
            // submission this long fits next time. Nothing recorded refers to the old arena now; its cached bind
            // groups go with it
            let needed = offset + bytes;
            self.flush(ctx)?;
            offset = 0;
            let size = needed.max(2 * self.arena_size()).max(ARENA_MIN_BYTES).div_ceil(COPY_ALIGN) * COPY_ALIGN;
            self.arena = Some(ctx.create_buffer("moco arena", size, wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST));
            self.bind_groups.clear();
        }
        self.host.resize(offset as usize, 0);
        self.host.extend_from_slice(data);
        self.host.resize((offset + bytes) as usize, 0);
        let arena = self.arena.clone().ok_or_else(|| Error::Wgpu("the recorder's arena was not created".into()))?;
        Ok((arena, offset))
    }

    /// Records one dispatch of `pipeline` over `grid`, its parameter block `params` bound at binding 0 and
    /// `buffers` at theirs, in a compute pass of its own (so its storage writes are visible to the next).
    pub(crate) fn dispatch(&mut self, ctx: &Wgpu, pipeline: &wgpu::ComputePipeline, params: &[u8], buffers: &[(u32, super::GpuSlice<'_>)], grid: (u32, u32, u32)) -> Result<()> {
        // a profile's query set is full: submit (before staging, so the parameter block goes with its dispatch)
        if self.profiler.as_ref().is_some_and(|p| p.pending.len() as u32 == PROFILED_PER_SUBMISSION) {
            self.flush(ctx)?;
        }
        let size = (params.len() as u64).max(1).div_ceil(16) * 16;
        let (arena, offset) = self.stage(ctx, params, size, ctx.uniform_align())?;
        let bind_group = self.bind_group(ctx, pipeline, &arena, offset, size, buffers);
        let timestamps = self.profiler.as_mut().map(|p| {
            let i = 2 * p.pending.len() as u32;
            p.pending.push(p.scope);
            (p.queries.clone(), i)
        });
        let timestamp_writes = timestamps.as_ref().map(|(q, i)| wgpu::ComputePassTimestampWrites { query_set: q, beginning_of_pass_write_index: Some(*i), end_of_pass_write_index: Some(i + 1) });
        let mut pass = self.encoder(ctx).begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes });
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(grid.0, grid.1, grid.2);
        drop(pass);
        self.counters.dispatches += 1;
        Ok(())
    }

    /// The bind group of one dispatch: from the cache on a deferred device, else created.
    fn bind_group(&mut self, ctx: &Wgpu, pipeline: &wgpu::ComputePipeline, arena: &wgpu::Buffer, offset: u64, size: u64, buffers: &[(u32, super::GpuSlice<'_>)]) -> wgpu::BindGroup {
        let create = |counters: &mut WgpuCounters| {
            let params = wgpu::BufferBinding { buffer: arena, offset, size: std::num::NonZeroU64::new(size) };
            let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: wgpu::BindingResource::Buffer(params) }];
            entries.extend(buffers.iter().map(|(b, s)| wgpu::BindGroupEntry { binding: *b, resource: s.binding() }));
            counters.bind_groups += 1;
            ctx.device().create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout: &pipeline.get_bind_group_layout(0), entries: &entries })
        };
        if !ctx.is_deferred() {
            return create(&mut self.counters);
        }
        let mut bindings = vec![(0, arena.clone(), offset, size)];
        bindings.extend(buffers.iter().map(|(b, s)| (*b, s.buffer().clone(), s.offset(), s.size())));
        let key = (pipeline.clone(), bindings);
        if let Some(bg) = self.bind_groups.get(&key) {
            return bg.clone();
        }
        if self.bind_groups.len() >= BIND_GROUP_CACHE_MAX {
            self.bind_groups.clear();
        }
        let bg = create(&mut self.counters);
        self.bind_groups.insert(key, bg.clone());
        bg
    }

    /// Records a copy of `data` into `dst` at byte `offset`, through the arena, so that it lands after the
    /// commands already recorded (a `queue.write_buffer` would land before them).
    pub(crate) fn upload(&mut self, ctx: &Wgpu, dst: &wgpu::Buffer, offset: u64, data: &[u8]) -> Result<()> {
        let bytes = (data.len() as u64).div_ceil(COPY_ALIGN) * COPY_ALIGN;
        let (arena, at) = self.stage(ctx, data, bytes, COPY_ALIGN)?;
        self.encoder(ctx).copy_buffer_to_buffer(&arena, at, dst, offset, bytes);
        Ok(())
    }

    /// Submits the open encoder, after writing the staged arena bytes. Validation errors of the recorded
    /// commands surface here, as [`Error::Wgpu`].
    pub(crate) fn flush(&mut self, ctx: &Wgpu) -> Result<()> {
        if let (false, Some(arena)) = (self.host.is_empty(), &self.arena) {
            ctx.queue().write_buffer(arena, 0, &self.host);
        }
        self.host.clear();
        let Some(mut encoder) = self.encoder.take() else { return Ok(()) };
        let timed = self.profiler.as_ref().map_or(0, |p| p.pending.len() as u64);
        if let (Some(p), true) = (&self.profiler, timed > 0) {
            encoder.resolve_query_set(&p.queries, 0..2 * timed as u32, &p.resolved, 0);
            encoder.copy_buffer_to_buffer(&p.resolved, 0, &p.host, 0, 16 * timed);
        }
        self.counters.submissions += 1;
        ctx.scoped(|| {
            ctx.queue().submit([encoder.finish()]);
            Ok(())
        })?;
        match &mut self.profiler {
            Some(p) if timed > 0 => p.collect(ctx, timed),
            _ => Ok(()),
        }
    }

    /// Ends an op: submits unless the device defers.
    pub(crate) fn end_op(&mut self, ctx: &Wgpu) -> Result<()> {
        if ctx.is_deferred() {
            Ok(())
        } else {
            self.flush(ctx)
        }
    }

    /// Copies `size` bytes of `src` from byte `offset` to the host: records the copy into the readback buffer,
    /// submits everything recorded, and waits for it.
    pub(crate) fn read(&mut self, ctx: &Wgpu, src: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
        if self.readback.as_ref().is_none_or(|b| b.size() < size) {
            self.readback = Some(ctx.create_buffer("moco readback", size.max(4096), wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST));
        }
        let staging = self.readback.clone().ok_or_else(|| Error::Wgpu("the readback buffer was not created".into()))?;
        self.encoder(ctx).copy_buffer_to_buffer(src, offset, &staging, 0, size);
        self.flush(ctx)?;
        map_read(ctx, &staging, size)
    }
}
