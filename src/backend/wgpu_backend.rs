//! [`Backend`] on wgpu: buffers are [`WgpuBuffer`]s (a storage buffer and its element count).

use super::wgpu::{self as low, WgpuContext, WgpuQueue};
use super::{Backend, BackendKind, InfoNceStats};
pub use super::wgpu::Adapter;
use crate::error::{Error, Result};
use crate::shape::{EmaShape, InfoNceShape, LogitsShape, QueueDType, QueueShape, SymmetricShape};
use std::borrow::{Borrow, BorrowMut};

/// The wgpu backend (Vulkan, Metal, DX12; lavapipe in CI).
#[derive(Clone, Debug)]
pub struct Wgpu {
    /// Device, queue and pipeline cache.
    pub ctx: WgpuContext,
}

/// An f32 storage buffer with its element count.
#[derive(Debug)]
pub struct WgpuBuffer {
    buffer: ::wgpu::Buffer,
    len: usize,
}

impl WgpuBuffer {
    /// Wraps a storage buffer the caller owns, of at least `len` f32 elements.
    pub fn from_buffer(buffer: ::wgpu::Buffer, len: usize) -> Result<Self> {
        if (buffer.size() / 4) < len as u64 {
            return Err(Error::shape("buffer", format!("a buffer of at least {} bytes", len as u64 * 4), format!("{} bytes", buffer.size())));
        }
        Ok(Self { buffer, len })
    }
    /// The storage buffer.
    pub fn buffer(&self) -> &::wgpu::Buffer {
        &self.buffer
    }
    /// Number of f32 elements.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True when the buffer holds no element.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Wgpu {
    /// Opens a wgpu device on the first adapter of the kind `adapter` allows.
    pub fn new(adapter: Adapter) -> Result<Self> {
        Ok(Self { ctx: WgpuContext::new(adapter)? })
    }
}

impl Backend for Wgpu {
    type Buffer = WgpuBuffer;
    type OwnedBuffer = WgpuBuffer;
    type Queue = WgpuQueue;
    fn kind(&self) -> BackendKind {
        BackendKind::Wgpu
    }
    fn name(&self) -> String {
        format!("wgpu: {}", self.ctx.adapter_name)
    }
    fn upload(&self, data: &[f32]) -> Result<WgpuBuffer> {
        Ok(WgpuBuffer { buffer: self.ctx.upload("moco buffer", data), len: data.len() })
    }
    fn download(&self, buf: &(impl Borrow<WgpuBuffer> + ?Sized)) -> Result<Vec<f32>> {
        let buf = buf.borrow();
        self.ctx.read(&buf.buffer, buf.len)
    }
    fn queue_from_f32(&self, data: &[f32], k: usize, c: usize, dtype: QueueDType) -> Result<WgpuQueue> {
        WgpuQueue::from_f32(&self.ctx, data, k, c, dtype)
    }
    fn queue_to_f32(&self, queue: &WgpuQueue) -> Result<Vec<f32>> {
        queue.to_f32(&self.ctx)
    }
    fn ema_update(&self, k: &mut (impl BorrowMut<WgpuBuffer> + ?Sized), q: &(impl Borrow<WgpuBuffer> + ?Sized), momentum: f64) -> Result<()> {
        let (k, q) = (k.borrow_mut(), q.borrow());
        let shape = EmaShape::new(k.len, momentum)?;
        shape.check(q.len, k.len)?;
        low::ema_update(&self.ctx, &k.buffer, &q.buffer, &shape)
    }
    fn logits(&self, l_pos: &mut (impl BorrowMut<WgpuBuffer> + ?Sized), l_neg: &mut (impl BorrowMut<WgpuBuffer> + ?Sized), q: &(impl Borrow<WgpuBuffer> + ?Sized), k: &(impl Borrow<WgpuBuffer> + ?Sized), queue: &WgpuQueue, shape: &LogitsShape) -> Result<()> {
        let (l_pos, l_neg, q, k) = (l_pos.borrow_mut(), l_neg.borrow_mut(), q.borrow(), k.borrow());
        shape.check_inputs(q.len, k.len, queue.len())?;
        shape.check_outputs(l_pos.len, l_neg.len)?;
        low::logits(&self.ctx, &l_pos.buffer, &l_neg.buffer, &q.buffer, &k.buffer, queue, shape)
    }
    fn infonce(&self, dq: &mut (impl BorrowMut<WgpuBuffer> + ?Sized), row_loss: &mut (impl BorrowMut<WgpuBuffer> + ?Sized), q: &(impl Borrow<WgpuBuffer> + ?Sized), k: &(impl Borrow<WgpuBuffer> + ?Sized), queue: &WgpuQueue, shape: &InfoNceShape) -> Result<InfoNceStats> {
        let (dq, row_loss, q, k) = (dq.borrow_mut(), row_loss.borrow_mut(), q.borrow(), k.borrow());
        shape.check_inputs(q.len, k.len, queue.len())?;
        shape.check_outputs(dq.len, row_loss.len)?;
        let out = low::InfoNceBuffers { dq: dq.buffer.clone(), row_loss: row_loss.buffer.clone(), stats: self.ctx.storage_buffer("moco stats", 16) };
        low::infonce(&self.ctx, &out, &q.buffer, &k.buffer, queue, shape)
    }
    fn moco_v3_loss(&self, dq1: &mut (impl BorrowMut<WgpuBuffer> + ?Sized), dq2: &mut (impl BorrowMut<WgpuBuffer> + ?Sized), q1: &(impl Borrow<WgpuBuffer> + ?Sized), q2: &(impl Borrow<WgpuBuffer> + ?Sized), k1: &(impl Borrow<WgpuBuffer> + ?Sized), k2: &(impl Borrow<WgpuBuffer> + ?Sized), shape: &SymmetricShape) -> Result<f32> {
        let (dq1, dq2, q1, q2, k1, k2) = (dq1.borrow_mut(), dq2.borrow_mut(), q1.borrow(), q2.borrow(), k1.borrow(), k2.borrow());
        shape.check(&[("q1", q1.len), ("q2", q2.len), ("k1", k1.len), ("k2", k2.len), ("dq1", dq1.len), ("dq2", dq2.len)])?;
        low::moco_v3_loss(&self.ctx, &dq1.buffer, &dq2.buffer, &q1.buffer, &q2.buffer, &k1.buffer, &k2.buffer, shape)
    }
    fn enqueue(&self, queue: &mut WgpuQueue, keys: &(impl Borrow<WgpuBuffer> + ?Sized), shape: &QueueShape) -> Result<usize> {
        let keys = keys.borrow();
        shape.check(keys.len, queue.len())?;
        low::enqueue(&self.ctx, queue, &keys.buffer, shape)
    }
}
