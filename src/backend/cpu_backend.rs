//! [`Backend`] on the CPU: the generic path borrows the caller's own slices (`Buffer = [f32]`), no copies in or out.

use super::{cpu, Backend, BackendKind, InfoNceStats, QueueDims};
use crate::error::Result;
use crate::shape::{EmaShape, InfoNceShape, LogitsShape, QueueDType, QueueShape, SymmetricShape};
use std::borrow::{Borrow, BorrowMut};

/// The CPU backend (rayon + a fast GEMM). Always available.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

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
    fn len(&self) -> usize {
        match self {
            CpuQueueStorage::F32(v) => v.len(),
            CpuQueueStorage::F16(v) => v.len(),
            CpuQueueStorage::BF16(v) => v.len(),
        }
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
        crate::shape::checked_kc(k, c, Some(storage.len()))?;
        Ok(Self { storage, k, c })
    }
    /// Gives the storage back (no copy).
    pub fn into_storage(self) -> CpuQueueStorage {
        self.storage
    }
    /// A read-only view for the low-level ops.
    pub fn view(&self) -> cpu::QueueView<'_> {
        match &self.storage {
            CpuQueueStorage::F32(v) => cpu::QueueView::F32(v),
            CpuQueueStorage::F16(v) => cpu::QueueView::F16(v),
            CpuQueueStorage::BF16(v) => cpu::QueueView::BF16(v),
        }
    }
    /// A mutable view for the low-level ops.
    pub fn view_mut(&mut self) -> cpu::QueueViewMut<'_> {
        match &mut self.storage {
            CpuQueueStorage::F32(v) => cpu::QueueViewMut::F32(v),
            CpuQueueStorage::F16(v) => cpu::QueueViewMut::F16(v),
            CpuQueueStorage::BF16(v) => cpu::QueueViewMut::BF16(v),
        }
    }
}

impl QueueDims for CpuQueue {
    fn k(&self) -> usize {
        self.k
    }
    fn c(&self) -> usize {
        self.c
    }
    fn dtype(&self) -> QueueDType {
        self.view().dtype()
    }
}

impl Backend for Cpu {
    type Buffer = [f32];
    type OwnedBuffer = Vec<f32>;
    type Queue = CpuQueue;
    fn kind(&self) -> BackendKind {
        BackendKind::Cpu
    }
    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }
    fn upload(&self, data: &[f32]) -> Result<Vec<f32>> {
        Ok(data.to_vec())
    }
    fn download(&self, buf: &(impl Borrow<[f32]> + ?Sized)) -> Result<Vec<f32>> {
        Ok(buf.borrow().to_vec())
    }
    fn queue_from_f32(&self, data: &[f32], k: usize, c: usize, dtype: QueueDType) -> Result<CpuQueue> {
        let storage = match dtype {
            QueueDType::F32 => CpuQueueStorage::F32(data.to_vec()),
            QueueDType::F16 => CpuQueueStorage::F16(data.iter().map(|&v| half::f16::from_f32(v)).collect()),
            QueueDType::BF16 => CpuQueueStorage::BF16(data.iter().map(|&v| half::bf16::from_f32(v)).collect()),
        };
        CpuQueue::new(storage, k, c)
    }
    fn queue_to_f32(&self, queue: &CpuQueue) -> Result<Vec<f32>> {
        let v = queue.view();
        Ok((0..v.len()).map(|i| v.get(i)).collect())
    }
    fn ema_update(&self, k: &mut (impl BorrowMut<[f32]> + ?Sized), q: &(impl Borrow<[f32]> + ?Sized), momentum: f64) -> Result<()> {
        let (k, q) = (k.borrow_mut(), q.borrow());
        cpu::ema_update(k, q, &EmaShape::new(k.len(), momentum)?)
    }
    fn logits(&self, l_pos: &mut (impl BorrowMut<[f32]> + ?Sized), l_neg: &mut (impl BorrowMut<[f32]> + ?Sized), q: &(impl Borrow<[f32]> + ?Sized), k: &(impl Borrow<[f32]> + ?Sized), queue: &CpuQueue, shape: &LogitsShape) -> Result<()> {
        shape.check_queue((queue.k, queue.c))?;
        cpu::logits(l_pos.borrow_mut(), l_neg.borrow_mut(), q.borrow(), k.borrow(), queue.view(), shape)
    }
    fn infonce(&self, dq: &mut (impl BorrowMut<[f32]> + ?Sized), row_loss: &mut (impl BorrowMut<[f32]> + ?Sized), q: &(impl Borrow<[f32]> + ?Sized), k: &(impl Borrow<[f32]> + ?Sized), queue: &CpuQueue, shape: &InfoNceShape) -> Result<InfoNceStats> {
        shape.check_queue((queue.k, queue.c))?;
        cpu::infonce(dq.borrow_mut(), row_loss.borrow_mut(), q.borrow(), k.borrow(), queue.view(), shape)
    }
    fn moco_v3_loss(&self, dq1: &mut (impl BorrowMut<[f32]> + ?Sized), dq2: &mut (impl BorrowMut<[f32]> + ?Sized), q1: &(impl Borrow<[f32]> + ?Sized), q2: &(impl Borrow<[f32]> + ?Sized), k1: &(impl Borrow<[f32]> + ?Sized), k2: &(impl Borrow<[f32]> + ?Sized), shape: &SymmetricShape) -> Result<f32> {
        cpu::moco_v3_loss(dq1.borrow_mut(), dq2.borrow_mut(), q1.borrow(), q2.borrow(), k1.borrow(), k2.borrow(), shape)
    }
    fn enqueue(&self, queue: &mut CpuQueue, keys: &(impl Borrow<[f32]> + ?Sized), shape: &QueueShape) -> Result<usize> {
        shape.check_queue((queue.k, queue.c))?;
        cpu::enqueue(&mut queue.view_mut(), keys.borrow(), shape)
    }
}
