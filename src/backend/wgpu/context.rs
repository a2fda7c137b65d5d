//! The wgpu context: adapter, device, queue and a pipeline cache, built once and reused. Setup follows wgpu's
//! hello_compute: instance, adapter, device, shader module, pipeline (auto layout), bind group, dispatch.

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// WGSL sources, embedded at build time (build.rs validates each with naga).
pub mod sources {
    /// `shaders/ema.wgsl`
    pub const EMA: &str = include_str!("../../../shaders/ema.wgsl");
    /// `shaders/contrastive.wgsl`
    pub const CONTRASTIVE: &str = include_str!("../../../shaders/contrastive.wgsl");
    /// `shaders/queue.wgsl`
    pub const QUEUE: &str = include_str!("../../../shaders/queue.wgsl");
    /// `shaders/vit.wgsl`
    pub const VIT: &str = include_str!("../../../shaders/vit.wgsl");
}

/// A wgpu device and queue with cached pipelines. Cheap to clone.
#[derive(Clone)]
pub struct WgpuContext {
    /// The device the buffers live on.
    pub device: wgpu::Device,
    /// The queue work is submitted to.
    pub queue: wgpu::Queue,
    /// Adapter name and backend, for logs.
    pub adapter_name: String,
    pipelines: Arc<Mutex<HashMap<(&'static str, &'static str, u32), wgpu::ComputePipeline>>>,
    /// The attention backward's `ds [B, H, T, T]` scratch: one buffer, grown on demand and reused.
    attention_scratch: Arc<Mutex<Option<wgpu::Buffer>>>,
}

impl std::fmt::Debug for WgpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WgpuContext({})", self.adapter_name)
    }
}

/// Which wgpu adapters may be opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Adapter {
    /// Any adapter, software ones (Mesa's lavapipe, WARP) included.
    Any,
    /// A hardware GPU only; a software adapter counts as none.
    HardwareOnly,
}

impl WgpuContext {
    /// Opens the first adapter wgpu offers (Vulkan, Metal, DX12 or GL), preferring a high-performance one.
    /// With [`Adapter::HardwareOnly`], a software adapter (lavapipe, WARP) counts as no adapter.
    /// Returns [`Error::Unavailable`] when there is none.
    pub fn new(adapter_choice: Adapter) -> Result<Self> {
        let allow_cpu = adapter_choice == Adapter::Any;
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            force_fallback_adapter: false,
            compatible_surface: None,
            ..Default::default()
        }))
        .map_err(|e| Error::Unavailable(format!("no wgpu adapter (Vulkan/Metal/DX12): {e}")))?;
        let info = adapter.get_info();
        if !allow_cpu && info.device_type == wgpu::DeviceType::Cpu {
            return Err(Error::Unavailable(format!("only a CPU wgpu adapter ({}) is present", info.name)));
        }
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("moco"),
            required_features: wgpu::Features::empty(),
            required_limits: wgpu::Limits {
                max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
                max_buffer_size: limits.max_buffer_size,
                max_storage_buffers_per_shader_stage: limits.max_storage_buffers_per_shader_stage.min(16),
                ..wgpu::Limits::default()
            },
            ..Default::default()
        }))
        .map_err(|e| Error::Unavailable(format!("wgpu device request failed on {}: {e}", info.name)))?;
        Ok(Self::from_device(device, queue, format!("{} ({:?})", info.name, info.backend)))
    }

    /// Wraps a device and queue the caller already owns (a framework's), so its buffers can be passed directly.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue, adapter_name: String) -> Self {
        device.on_uncaptured_error(Arc::new(|e| eprintln!("moco: uncaptured wgpu error: {e}")));
        Self { device, queue, adapter_name, pipelines: Arc::new(Mutex::new(HashMap::new())), attention_scratch: Arc::new(Mutex::new(None)) }
    }

    /// The attention backward's scratch buffer, at least `bytes` long: the one held by this context (shared by its
    /// clones), replaced by a bigger one when too small. Work already queued on the old buffer keeps it alive, and
    /// queue order makes reuse across calls safe.
    pub(crate) fn attention_scratch(&self, bytes: u64) -> wgpu::Buffer {
        let mut slot = self.attention_scratch.lock().unwrap_or_else(|p| p.into_inner());
        match slot.as_ref() {
            Some(b) if b.size() >= bytes => b.clone(),
            _ => {
                let b = self.storage_buffer("moco attention ds scratch", bytes);
                *slot = Some(b.clone());
                b
            }
        }
    }

    /// Bytes of the attention scratch held now (`None` before the first attention backward); for tests.
    #[doc(hidden)]
    pub fn attention_scratch_bytes(&self) -> Option<u64> {
        self.attention_scratch.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|b| b.size())
    }

    /// The pipeline for `entry` of `source`, with `QUEUE_DTYPE = dtype` where the shader declares it.
    pub(crate) fn pipeline(&self, name: &'static str, source: &'static str, entry: &'static str, dtype: Option<u32>) -> wgpu::ComputePipeline {
        let key = (name, entry, dtype.unwrap_or(u32::MAX));
        let mut cache = self.pipelines.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .entry(key)
            .or_insert_with(|| {
                let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor { label: Some(name), source: wgpu::ShaderSource::Wgsl(source.into()) });
                let constants: Vec<(&str, f64)> = dtype.map(|d| vec![("QUEUE_DTYPE", d as f64)]).unwrap_or_default();
                self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(entry),
                    layout: None,
                    module: &module,
                    entry_point: Some(entry),
                    compilation_options: wgpu::PipelineCompilationOptions { constants: &constants, zero_initialize_workgroup_memory: false },
                    cache: None,
                })
            })
            .clone()
    }

    /// A storage buffer of `bytes` bytes (rounded up to 4), usable as kernel input, output and copy source/target.
    pub fn storage_buffer(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.div_ceil(4).max(1) * 4,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// A storage buffer holding `data`.
    pub fn upload<T: bytemuck::Pod>(&self, label: &str, data: &[T]) -> wgpu::Buffer {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let buf = self.storage_buffer(label, bytes.len() as u64);
        if !bytes.is_empty() {
            let mut padded = bytes.to_vec();
            padded.resize(bytes.len().div_ceil(4) * 4, 0);
            self.queue.write_buffer(&buf, 0, &padded);
        }
        buf
    }

    /// Copies the first `bytes` bytes of `buf` back to the host (copy, submit, map_async, poll).
    pub fn read_bytes(&self, buf: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        let size = bytes.div_ceil(4) * 4;
        if size == 0 {
            return Ok(Vec::new());
        }
        if size > buf.size() {
            return Err(Error::shape("wgpu read", format!("at most {} bytes", buf.size()), format!("{bytes} bytes")));
        }
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("moco readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("readback") });
        enc.copy_buffer_to_buffer(buf, 0, &staging, 0, size);
        self.queue.submit([enc.finish()]);
        let slice = staging.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| Error::Wgpu(format!("poll: {e}")))?;
        rx.recv().map_err(|e| Error::Wgpu(format!("map_async: {e}")))?.map_err(|e| Error::Wgpu(format!("map_async: {e}")))?;
        let data = slice.get_mapped_range().map_err(|e| Error::Wgpu(format!("map: {e}")))?.to_vec();
        staging.unmap();
        let mut data = data;
        data.truncate(bytes as usize);
        Ok(data)
    }

    /// Reads `len` elements of type T from `buf`.
    pub fn read<T: bytemuck::Pod>(&self, buf: &wgpu::Buffer, len: usize) -> Result<Vec<T>> {
        let bytes = self.read_bytes(buf, (len * std::mem::size_of::<T>()) as u64)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Waits for all submitted work.
    pub fn synchronize(&self) -> Result<()> {
        self.device.poll(wgpu::PollType::wait_indefinitely()).map(|_| ()).map_err(|e| Error::Wgpu(format!("poll: {e}")))
    }

    /// Runs `f` inside validation and out-of-memory error scopes; a captured error becomes [`Error::Wgpu`].
    pub(crate) fn scoped<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let val = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        let v = pollster::block_on(val.pop());
        let o = pollster::block_on(oom.pop());
        if let Some(e) = v.or(o) {
            return Err(Error::Wgpu(e.to_string()));
        }
        out
    }
}

/// Alignment of a [`GpuSlice`] offset: WebGPU's default `min_storage_buffer_offset_alignment` (256 bytes).
pub const SLICE_ALIGN_BYTES: u64 = 256;

/// A byte range of a storage buffer that a kernel binds: a whole buffer, or one region of a bigger allocation
/// (a model's flat parameters, or its one activation allocation).
///
/// WebGPU forbids binding read-only and writable views of one buffer in the same dispatch, so the layer shaders
/// (conv, norm, pool) declare every storage binding `read_write`; two disjoint slices of one buffer can then be
/// input and output of one kernel.
#[derive(Clone, Copy, Debug)]
pub struct GpuSlice<'a> {
    buffer: &'a wgpu::Buffer,
    offset: u64,
    size: u64,
}

impl<'a> GpuSlice<'a> {
    /// The whole buffer.
    pub fn whole(buffer: &'a wgpu::Buffer) -> Self {
        Self { buffer, offset: 0, size: buffer.size() }
    }
    /// `len` f32 (or u32) elements starting at element `offset`. The byte offset must be a multiple of
    /// [`SLICE_ALIGN_BYTES`] (64 elements) and the range must lie inside the buffer.
    pub fn elems(buffer: &'a wgpu::Buffer, offset: usize, len: usize) -> Result<Self> {
        let (off, size) = (offset as u64 * 4, (len.max(1) as u64) * 4);
        if off % SLICE_ALIGN_BYTES != 0 || off + size > buffer.size() {
            return Err(Error::shape(
                "gpu slice",
                format!("an offset that is a multiple of {} elements and a range inside the {}-byte buffer", SLICE_ALIGN_BYTES / 4, buffer.size()),
                format!("elements {offset}..{}", offset + len),
            ));
        }
        Ok(Self { buffer, offset: off, size })
    }
    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }
    /// Offset in bytes into [`GpuSlice::buffer`].
    pub fn offset(&self) -> u64 {
        self.offset
    }
    /// The underlying buffer.
    pub fn buffer(&self) -> &'a wgpu::Buffer {
        self.buffer
    }
    fn binding(&self) -> wgpu::BindingResource<'a> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer: self.buffer, offset: self.offset, size: std::num::NonZeroU64::new(self.size) })
    }
}

impl<'a> From<&'a wgpu::Buffer> for GpuSlice<'a> {
    fn from(buffer: &'a wgpu::Buffer) -> Self {
        Self::whole(buffer)
    }
}

/// What a layer kernel accepts as a buffer argument: a whole `wgpu::Buffer` or a [`GpuSlice`] of one.
pub trait AsGpuSlice {
    /// The bound range.
    fn as_gpu_slice(&self) -> GpuSlice<'_>;
}

impl AsGpuSlice for wgpu::Buffer {
    fn as_gpu_slice(&self) -> GpuSlice<'_> {
        GpuSlice::whole(self)
    }
}

impl AsGpuSlice for GpuSlice<'_> {
    fn as_gpu_slice(&self) -> GpuSlice<'_> {
        *self
    }
}

/// One dispatch: pipeline, bind-group entries (binding, buffer range), a uniform parameter block, and a grid.
pub(crate) struct Dispatch<'a> {
    pub pipeline: wgpu::ComputePipeline,
    pub buffers: Vec<(u32, GpuSlice<'a>)>,
    pub grid: (u32, u32, u32),
}

/// Records the dispatches in one compute pass each (so storage writes are visible to the next) and submits.
/// `params` is the uniform block bound at binding 0 of every dispatch.
pub(crate) fn submit(ctx: &WgpuContext, params: &[(&[u8], Dispatch)]) {
    let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("moco") });
    let mut keep = Vec::new();
    for (p, d) in params {
        let ubuf = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("moco params"),
            size: (p.len() as u64).div_ceil(16) * 16,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut padded = p.to_vec();
        padded.resize(ubuf.size() as usize, 0);
        ctx.queue.write_buffer(&ubuf, 0, &padded);
        let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: ubuf.as_entire_binding() }];
        for (b, buf) in &d.buffers {
            entries.push(wgpu::BindGroupEntry { binding: *b, resource: buf.binding() });
        }
        let bg = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout: &d.pipeline.get_bind_group_layout(0), entries: &entries });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None });
            pass.set_pipeline(&d.pipeline);
            pass.set_bind_group(0, &bg, &[]);
            pass.dispatch_workgroups(d.grid.0, d.grid.1, d.grid.2);
        }
        keep.push(ubuf);
    }
    ctx.queue.submit([enc.finish()]);
}

/// Splits `groups` workgroups over x and y so neither exceeds the 65535 per-dimension limit.
pub(crate) fn grid_2d(groups: u32) -> (u32, u32, u32) {
    if groups <= 65535 {
        (groups.max(1), 1, 1)
    } else {
        (65535, groups.div_ceil(65535), 1)
    }
}
