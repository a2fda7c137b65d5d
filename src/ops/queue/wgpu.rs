//! Ring-buffer enqueue on wgpu (`shaders/queue.wgsl`) and the queue buffer type.

use super::params::QueueParams;
use super::{checked_kc, KeyQueue, QueueDType, QueueShape, KERNELS};
use crate::device::wgpu::{submit, GpuSlice, Wgpu};
use crate::error::{Error, Result};
use crate::ops::launch::grid_2d;
use crate::ops::normalize::NormalizeShape;

/// A queue `[K, C]` in a wgpu storage buffer. f16 and bf16 are packed two per u32 word (low half first).
#[derive(Debug)]
pub struct WgpuQueue {
    pub(crate) buffer: wgpu::Buffer,
    pub(crate) dtype: QueueDType,
    pub(crate) len: usize,
    pub(crate) k: usize,
    pub(crate) c: usize,
}

impl WgpuQueue {
    /// Wraps a storage buffer the caller owns as a queue of `k` keys of `c` features (f16/bf16 packed two per
    /// u32 word, low half first); the buffer must hold at least `K*C` elements of `dtype`.
    pub fn from_buffer(buffer: wgpu::Buffer, k: usize, c: usize, dtype: QueueDType) -> Result<Self> {
        let q = Self { buffer, dtype, len: checked_kc(k, c, None)?, k, c };
        q.check_bytes("queue")?;
        Ok(q)
    }
    /// Uploads `values: [K, C]`, converting to `dtype` (round to nearest even) on the host.
    pub fn from_f32(ctx: &Wgpu, values: &[f32], k: usize, c: usize, dtype: QueueDType) -> Result<Self> {
        let len = checked_kc(k, c, Some(values.len()))?;
        let buffer = match dtype {
            QueueDType::F32 => ctx.upload_pod("moco queue", values),
            QueueDType::F16 => ctx.upload_pod("moco queue", &values.iter().map(|&v| half::f16::from_f32(v)).collect::<Vec<_>>()),
            QueueDType::BF16 => ctx.upload_pod("moco queue", &values.iter().map(|&v| half::bf16::from_f32(v)).collect::<Vec<_>>()),
        };
        Ok(Self { buffer, dtype, len, k, c })
    }
    /// The storage buffer.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }
    /// Number of elements (K*C).
    pub fn len(&self) -> usize {
        self.len
    }
    /// True when the queue holds no element (never, for a queue built by its constructors).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Reads the queue back as f32.
    pub fn to_f32(&self, ctx: &Wgpu) -> Result<Vec<f32>> {
        Ok(match self.dtype {
            QueueDType::F32 => ctx.read_elems::<f32>(&self.buffer, self.len)?,
            QueueDType::F16 => ctx.read_bytes(&self.buffer, self.len as u64 * 2)?.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            QueueDType::BF16 => ctx.read_bytes(&self.buffer, self.len as u64 * 2)?.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        })
    }
    /// The dtype code the shaders use (`QUEUE_DTYPE`).
    pub(crate) fn code(&self) -> u32 {
        self.dtype.code()
    }
    pub(crate) fn check_bytes(&self, op: &'static str) -> Result<()> {
        let need = (self.len * self.dtype.size()) as u64;
        if self.buffer.size() < need {
            return Err(Error::shape(op, format!("queue buffer of at least {need} bytes"), format!("{} bytes", self.buffer.size())));
        }
        Ok(())
    }
}

super::queue_dims!(WgpuQueue, |q| q.dtype);

/// Writes `keys: [N, C]` (raw; normalised here) into rows `ptr..ptr+N (mod K)` of the queue; returns the new pointer.
/// `keys` must hold exactly N*C elements.
pub fn enqueue(ctx: &Wgpu, queue: &mut WgpuQueue, keys: GpuSlice<'_>, shape: &QueueShape) -> Result<usize> {
    shape.check_enqueue(keys.len(), queue.len, &*queue)?;
    queue.check_bytes("queue_enqueue")?;
    let (n, c) = (shape.n, shape.c);
    let kh = ctx.scratch("moco k_hat", (n * c * 4) as u64);
    let inv = ctx.scratch("moco k_inv_norm", (n * 4) as u64);
    let p = QueueParams::new(shape, queue.code());
    let entry = if queue.dtype == QueueDType::F32 { "enqueue_f32" } else { "enqueue_packed16" };
    let binding = if queue.dtype == QueueDType::F32 { 2 } else { 3 };
    ctx.scoped(|| {
        let (np, nd) = crate::ops::normalize::wgpu::dispatch(ctx, GpuSlice::from(&kh), GpuSlice::from(&inv), keys, &NormalizeShape::new(n, c)?);
        let ep = KERNELS.wgpu_pipeline(ctx, entry, None);
        submit(ctx, &[(&np[..], nd), (bytemuck::bytes_of(&p), crate::device::wgpu::Dispatch { pipeline: ep, buffers: vec![(1, GpuSlice::from(&kh)), (binding, GpuSlice::from(&queue.buffer))], grid: grid_2d(p.total.div_ceil(256) as usize) })])
    })?;
    Ok(shape.next_ptr())
}

impl KeyQueue for Wgpu {
    type Queue = WgpuQueue;
    fn queue_from_f32(&mut self, data: &[f32], k: usize, c: usize, dtype: QueueDType) -> Result<WgpuQueue> {
        WgpuQueue::from_f32(self, data, k, c, dtype)
    }
    fn queue_to_f32(&self, queue: &WgpuQueue) -> Result<Vec<f32>> {
        queue.to_f32(self)
    }
    fn enqueue(&mut self, queue: &mut WgpuQueue, keys: GpuSlice<'_>, shape: &QueueShape) -> Result<usize> {
        enqueue(self, queue, keys, shape)
    }
}
