//! Ring-buffer enqueue on wgpu (`shaders/queue.wgsl`) and the queue buffer type.

use super::context::{GpuSlice, grid_2d, sources, submit, Dispatch, WgpuContext};
use crate::error::{Error, Result};
use crate::backend::plan::QueueParams;
use crate::backend::QueueDims;
use crate::shape::{checked_kc, QueueDType, QueueShape};

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
    pub fn from_f32(ctx: &WgpuContext, values: &[f32], k: usize, c: usize, dtype: QueueDType) -> Result<Self> {
        let len = checked_kc(k, c, Some(values.len()))?;
        let buffer = match dtype {
            QueueDType::F32 => ctx.upload("moco queue", values),
            QueueDType::F16 => ctx.upload("moco queue", &values.iter().map(|&v| half::f16::from_f32(v)).collect::<Vec<_>>()),
            QueueDType::BF16 => ctx.upload("moco queue", &values.iter().map(|&v| half::bf16::from_f32(v)).collect::<Vec<_>>()),
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
    pub fn to_f32(&self, ctx: &WgpuContext) -> Result<Vec<f32>> {
        Ok(match self.dtype {
            QueueDType::F32 => ctx.read::<f32>(&self.buffer, self.len)?,
            QueueDType::F16 => ctx.read_bytes(&self.buffer, self.len as u64 * 2)?.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            QueueDType::BF16 => ctx.read_bytes(&self.buffer, self.len as u64 * 2)?.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        })
    }
    /// The dtype code the shaders use (`QUEUE_DTYPE`).
    pub(crate) fn code(&self) -> u32 {
        match self.dtype {
            QueueDType::F32 => 0,
            QueueDType::F16 => 1,
            QueueDType::BF16 => 2,
        }
    }
    pub(crate) fn check_bytes(&self, op: &'static str) -> Result<()> {
        let need = (self.len * self.dtype.size()) as u64;
        if self.buffer.size() < need {
            return Err(Error::shape(op, format!("queue buffer of at least {need} bytes"), format!("{} bytes", self.buffer.size())));
        }
        Ok(())
    }
}

impl QueueDims for WgpuQueue {
    fn k(&self) -> usize {
        self.k
    }
    fn c(&self) -> usize {
        self.c
    }
    fn dtype(&self) -> QueueDType {
        self.dtype
    }
}

/// Writes `keys: [N, C]` (raw; normalised here) into rows `ptr..ptr+N (mod K)` of the queue; returns the new pointer.
pub fn enqueue(ctx: &WgpuContext, queue: &WgpuQueue, keys: &wgpu::Buffer, shape: &QueueShape) -> Result<usize> {
    shape.check(shape.n * shape.c, queue.len)?;
    shape.check_queue((queue.k, queue.c))?;
    queue.check_bytes("queue_enqueue")?;
    if keys.size() < (shape.n * shape.c * 4) as u64 {
        return Err(Error::shape("queue_enqueue", format!("keys buffer of {} bytes", shape.n * shape.c * 4), format!("{} bytes", keys.size())));
    }
    let (n, c) = (shape.n as u32, shape.c as u32);
    let kh = ctx.storage_buffer("moco k_hat", (shape.n * shape.c * 4) as u64);
    let inv = ctx.storage_buffer("moco k_inv_norm", (shape.n * 4) as u64);
    let norm = super::contrastive::normalize_params(n, c);
    let p = QueueParams::new(shape, queue.code());
    let (entry, total) = match queue.dtype {
        QueueDType::F32 => ("enqueue_f32", p.total),
        _ => ("enqueue_packed16", p.total),
    };
    let binding = if queue.dtype == QueueDType::F32 { 2 } else { 3 };
    ctx.scoped(|| {
        let np = ctx.pipeline("contrastive", sources::CONTRASTIVE, "normalize_rows", Some(0));
        let ep = ctx.pipeline("queue", sources::QUEUE, entry, None);
        submit(ctx, &[
            (bytemuck::bytes_of(&norm), Dispatch { pipeline: np, buffers: vec![(1, GpuSlice::from(keys)), (2, GpuSlice::from(&kh)), (3, GpuSlice::from(&inv))], grid: grid_2d(n) }),
            (bytemuck::bytes_of(&p), Dispatch { pipeline: ep, buffers: vec![(1, GpuSlice::from(&kh)), (binding, GpuSlice::from(&queue.buffer))], grid: grid_2d(total.div_ceil(256)) }),
        ]);
        Ok(())
    })?;
    Ok(shape.next_ptr())
}
