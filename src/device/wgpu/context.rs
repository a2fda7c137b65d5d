//! The wgpu device: adapter, device, queue and a pipeline cache, built once and reused. Setup follows wgpu's
//! hello_compute: instance, adapter, device, shader module, pipeline (auto layout), bind group, dispatch.

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A wgpu device: the device and queue, the pipeline cache (shared by clones) and the ops' state (a clone starts
/// without: scratch is never shared between two devices). Cheap to clone.
#[derive(Clone)]
pub struct Wgpu {
    device: wgpu::Device,
    queue: wgpu::Queue,
    adapter_name: String,
    pipelines: Arc<Mutex<HashMap<(&'static str, &'static str, u32), wgpu::ComputePipeline>>>,
    state: crate::device::OpState,
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
        Self { device, queue, adapter_name, pipelines: Arc::new(Mutex::new(HashMap::new())), state: Default::default() }
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
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.div_ceil(4).max(1) * 4,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
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

