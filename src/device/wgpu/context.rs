//! The wgpu device: adapter, device, queue and a pipeline cache, built once and reused. Setup follows wgpu's
//! hello_compute: instance, adapter, device, shader module, pipeline (auto layout), bind group, dispatch.

use super::recorder::{Profiler, Recorder, WgpuCounters};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// A wgpu device: the device and queue, the pipeline cache and the command recorder (both shared by clones),
/// and the ops' state and scratch buffers (a clone starts without: scratch is never shared between two devices).
/// Cheap to clone.
pub struct Wgpu {
    device: wgpu::Device,
    queue: wgpu::Queue,
    adapter_name: String,
    pipelines: Arc<Mutex<HashMap<(&'static str, &'static str, u32), wgpu::ComputePipeline>>>,
    // one encoder for all clones, so work is submitted in call order
    recorder: Arc<Mutex<Recorder>>,
    // buffers created through this device and its clones
    buffers_created: Arc<AtomicU64>,
    // WebGPU's `min_uniform_buffer_offset_alignment` of this device
    uniform_align: u64,
    // per clone: whether ops leave their work recorded for a later submission
    deferred: bool,
    scratch: Arc<Mutex<HashMap<&'static str, wgpu::Buffer>>>,
    state: crate::device::OpState,
}

impl Clone for Wgpu {
    /// The same device, queue, pipelines and recorder, deferring as this handle does; no op state or scratch yet.
    fn clone(&self) -> Self {
        Self {
            device: self.device.clone(),
            queue: self.queue.clone(),
            adapter_name: self.adapter_name.clone(),
            pipelines: self.pipelines.clone(),
            recorder: self.recorder.clone(),
            buffers_created: self.buffers_created.clone(),
            uniform_align: self.uniform_align,
            deferred: self.deferred,
            scratch: Default::default(),
            state: Default::default(),
        }
    }
}

impl std::fmt::Debug for Wgpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Wgpu({})", self.adapter_name)
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

impl Wgpu {
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
            // timestamps where the adapter has them, for a profile (`Wgpu::start_profile`)
            required_features: adapter.features() & wgpu::Features::TIMESTAMP_QUERY,
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
        let uniform_align = u64::from(device.limits().min_uniform_buffer_offset_alignment).max(16);
        Self {
            device,
            queue,
            adapter_name,
            pipelines: Default::default(),
            recorder: Default::default(),
            buffers_created: Default::default(),
            uniform_align,
            deferred: false,
            scratch: Default::default(),
            state: Default::default(),
        }
    }

    /// Whether this handle's ops leave their work recorded instead of submitting it at the end of each call.
    /// Off by default, so that a framework sharing the queue sees an op's work submitted when the call returns.
    /// On, the work goes out in one submission at the next read, [`Wgpu::flush`] or
    /// [`crate::device::Device::synchronize`] (from any clone); the training engine's step runs this way, and
    /// its bind groups are then made once and reused. Only this handle changes, and the clones made from it later.
    pub fn defer_submissions(&mut self, on: bool) {
        self.deferred = on;
    }

    /// Whether this handle defers its submissions ([`Wgpu::defer_submissions`]).
    pub fn is_deferred(&self) -> bool {
        self.deferred
    }

    /// Submits the work recorded and not yet submitted (by this handle or a clone); does not wait for it.
    pub fn flush(&self) -> Result<()> {
        self.recorder().flush(self)
    }

    /// What this device and its clones have done so far: submissions, dispatches, buffers and bind groups made.
    pub fn counters(&self) -> WgpuCounters {
        WgpuCounters { buffers: self.buffers_created.load(Ordering::Relaxed), ..self.recorder().counters }
    }

    /// Starts timing every dispatch with GPU timestamps, by scope ([`Wgpu::profile_scope`]); each submission then
    /// waits for the GPU to read its times. An error saying why where the device has no timestamp queries.
    pub fn start_profile(&self) -> Result<()> {
        if !self.device.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
            return Err(Error::Unavailable(format!("{} offers no timestamp queries (wgpu's TIMESTAMP_QUERY), so there are no per-layer GPU times", self.adapter_name)));
        }
        self.flush()?;
        let profiler = Profiler::new(self);
        self.recorder().profiler = Some(profiler);
        Ok(())
    }

    /// Whether a profile runs ([`Wgpu::start_profile`]).
    pub fn profiling(&self) -> bool {
        self.recorder().profiler.is_some()
    }

    /// Names the dispatches recorded from now on in a running profile (a layer, the loss, the optimiser); a no-op
    /// without one.
    pub fn profile_scope(&self, name: &str) {
        if let Some(p) = &mut self.recorder().profiler {
            p.enter(name);
        }
    }

    /// Ends the profile: submits and times what is recorded, and returns the GPU time and dispatches of each
    /// scope, in order of first use (empty without a profile).
    pub fn take_profile(&self) -> Result<Vec<crate::device::ProfileRow>> {
        let mut rec = self.recorder();
        rec.flush(self)?;
        let rows = rec.profiler.take().map(|p| p.rows).unwrap_or_default();
        Ok(rows.into_iter().filter(|r| r.2 > 0).map(|(scope, ns, dispatches)| crate::device::ProfileRow { scope, gpu_ms: ns * 1e-6, count: dispatches }).collect())
    }

    pub(crate) fn recorder(&self) -> MutexGuard<'_, Recorder> {
        self.recorder.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn uniform_align(&self) -> u64 {
        self.uniform_align
    }

    /// Records commands with `f` into the shared encoder, after the work already recorded; submits unless this
    /// handle defers.
    pub(crate) fn encode(&self, f: impl FnOnce(&mut wgpu::CommandEncoder)) -> Result<()> {
        let mut rec = self.recorder();
        f(rec.encoder(self));
        rec.end_op(self)
    }

    /// This handle's scratch buffer `name`, at least `bytes` long: made once and reused by later calls (grown when
    /// a call needs more). A scratch buffer holds nothing between two ops; the dispatches of one submission run
    /// in order, so ops recorded one after the other may share it.
    pub(crate) fn scratch(&self, name: &'static str, bytes: u64) -> wgpu::Buffer {
        let mut pool = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        let bytes = bytes.div_ceil(4).max(1) * 4;
        match pool.get(name) {
            Some(b) if b.size() >= bytes => b.clone(),
            _ => {
                let b = self.storage_buffer(name, bytes);
                pool.insert(name, b.clone());
                b
            }
        }
    }

    /// A 16-byte storage buffer bound where a kernel's optional input is absent (never read by it).
    pub(crate) fn dummy(&self) -> wgpu::Buffer {
        self.scratch("moco dummy", 16)
    }

    /// A buffer of `size` bytes with `usage`, counted in [`Wgpu::counters`].
    pub(crate) fn create_buffer(&self, label: &str, size: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
        self.buffers_created.fetch_add(1, Ordering::Relaxed);
        self.device.create_buffer(&wgpu::BufferDescriptor { label: Some(label), size, usage, mapped_at_creation: false })
    }

    /// The wgpu device the buffers live on.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The queue work is submitted to.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// Adapter name and backend, for logs.
    pub fn adapter_name(&self) -> &str {
        &self.adapter_name
    }

    /// The per-device state of one op (see [`crate::device::OpState`]).
    pub fn op_state<T: Default + Send + Sync + 'static>(&mut self) -> &mut T {
        self.state.get::<T>()
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
        self.create_buffer(label, bytes.div_ceil(4).max(1) * 4, wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST)
    }

    /// A storage buffer holding `data`.
    pub fn upload_pod<T: bytemuck::Pod>(&self, label: &str, data: &[T]) -> wgpu::Buffer {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let buf = self.storage_buffer(label, bytes.len() as u64);
        if !bytes.is_empty() {
            let mut padded = bytes.to_vec();
            padded.resize(bytes.len().div_ceil(4) * 4, 0);
            self.queue.write_buffer(&buf, 0, &padded);
        }
        buf
    }

    /// Copies the first `bytes` bytes of `buf` back to the host, after the work recorded so far (which this
    /// submits), and waits for it.
    pub fn read_bytes(&self, buf: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        self.read_bytes_at(buf, 0, bytes)
    }

    /// Copies `bytes` bytes of `buf` from byte `offset` (a multiple of 4) back to the host.
    pub(crate) fn read_bytes_at(&self, buf: &wgpu::Buffer, offset: u64, bytes: u64) -> Result<Vec<u8>> {
        let size = bytes.div_ceil(4) * 4;
        if size == 0 {
            return Ok(Vec::new());
        }
        if offset % 4 != 0 || offset + size > buf.size() {
            return Err(Error::shape("wgpu read", format!("a 4-byte aligned range inside the {}-byte buffer", buf.size()), format!("bytes {offset}..{}", offset + bytes)));
        }
        let mut data = self.recorder().read(self, buf, offset, size)?;
        data.truncate(bytes as usize);
        Ok(data)
    }

    /// Reads `len` elements of type T from `buf`.
    pub fn read_elems<T: bytemuck::Pod>(&self, buf: &wgpu::Buffer, len: usize) -> Result<Vec<T>> {
        let bytes = self.read_bytes(buf, (len * std::mem::size_of::<T>()) as u64)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
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

