//! The queue in host memory, and the ring-buffer enqueue on the CPU.

use super::view::{QueueSlice, QueueSliceMut, QueueView, QueueViewMut};
use super::{checked_kc, KeyQueue, QueueDType, QueueShape};
use crate::device::CpuDevice;
use crate::error::Result;
use crate::ops::normalize::NORM_EPS;

/// Writes the N keys, L2-normalised, into rows `ptr, ptr+1, ... (mod K)` of `queue: [K, C]` and returns the new
/// pointer `(ptr + N) % K`. `keys: [N, C]` raw. Any `1 <= N <= K`; the write wraps around the end.
pub fn enqueue(queue: &mut QueueViewMut, keys: &[f32], shape: &QueueShape) -> Result<usize> {
    shape.check_enqueue(keys.len(), queue.len(), &*queue)?;
    let c = shape.c;
    for r in 0..shape.n {
        let row = &keys[r * c..(r + 1) * c];
        let inv = 1.0 / row.iter().map(|v| v * v).sum::<f32>().sqrt().max(NORM_EPS);
        let dst = (shape.ptr + r) % shape.k;
        for (ch, v) in row.iter().enumerate() {
            queue.set(dst * c + ch, v * inv);
        }
    }
    Ok(shape.next_ptr())
}

/// The storage of a host queue, in one of the three element types.
#[derive(Clone, Debug)]
pub enum CpuQueueStorage {
    /// f32 storage.
    F32(Vec<f32>),
    /// f16 storage.
    F16(Vec<half::f16>),
    /// bf16 storage.
    BF16(Vec<half::bf16>),
}

impl CpuQueueStorage {
    /// Elements held.
    pub fn len(&self) -> usize {
        match self {
            CpuQueueStorage::F32(v) => v.len(),
            CpuQueueStorage::F16(v) => v.len(),
            CpuQueueStorage::BF16(v) => v.len(),
        }
    }
    /// True when no element is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A queue `[K, C]` in host memory that knows its K and C.
#[derive(Clone, Debug)]
pub struct CpuQueue {
    storage: CpuQueueStorage,
    k: usize,
    c: usize,
}

impl CpuQueue {
    /// Takes ownership of `storage` (no copy) as a queue of `k` keys of `c` features; its length must be `k*c`.
    pub fn new(storage: CpuQueueStorage, k: usize, c: usize) -> Result<Self> {
        checked_kc(k, c, Some(storage.len()))?;
        Ok(Self { storage, k, c })
    }
    /// `data: [K, C]` converted to `dtype` (round to nearest even).
    pub fn from_f32(data: &[f32], k: usize, c: usize, dtype: QueueDType) -> Result<Self> {
        let storage = match dtype {
            QueueDType::F32 => CpuQueueStorage::F32(data.to_vec()),
            QueueDType::F16 => CpuQueueStorage::F16(data.iter().map(|&v| half::f16::from_f32(v)).collect()),
            QueueDType::BF16 => CpuQueueStorage::BF16(data.iter().map(|&v| half::bf16::from_f32(v)).collect()),
        };
        Self::new(storage, k, c)
    }
    /// Gives the storage back (no copy).
    pub fn into_storage(self) -> CpuQueueStorage {
        self.storage
    }
    /// A read-only view for the low-level ops.
    pub fn view(&self) -> QueueView<'_> {
        let slice = match &self.storage {
            CpuQueueStorage::F32(v) => QueueSlice::F32(v),
            CpuQueueStorage::F16(v) => QueueSlice::F16(v),
            CpuQueueStorage::BF16(v) => QueueSlice::BF16(v),
        };
        QueueView { slice, k: self.k, c: self.c } // K*C checked by the constructor
    }
    /// A mutable view for the low-level ops.
    pub fn view_mut(&mut self) -> QueueViewMut<'_> {
        let slice = match &mut self.storage {
            CpuQueueStorage::F32(v) => QueueSliceMut::F32(v),
            CpuQueueStorage::F16(v) => QueueSliceMut::F16(v),
            CpuQueueStorage::BF16(v) => QueueSliceMut::BF16(v),
        };
        QueueViewMut { slice, k: self.k, c: self.c } // K*C checked by the constructor
    }
    /// The contents as f32, `[K, C]`.
    pub fn to_f32(&self) -> Vec<f32> {
        let v = self.view();
        (0..v.len()).map(|i| v.get(i)).collect()
    }
}

super::queue_dims!(CpuQueue, |q| q.view().dtype());

impl KeyQueue for CpuDevice {
    type Queue = CpuQueue;
    fn queue_from_f32(&mut self, data: &[f32], k: usize, c: usize, dtype: QueueDType) -> Result<CpuQueue> {
        CpuQueue::from_f32(data, k, c, dtype)
    }
    fn queue_to_f32(&self, queue: &CpuQueue) -> Result<Vec<f32>> {
        Ok(queue.to_f32())
    }
    fn enqueue(&mut self, queue: &mut CpuQueue, keys: &[f32], shape: &QueueShape) -> Result<usize> {
        enqueue(&mut queue.view_mut(), keys, shape)
    }
}
