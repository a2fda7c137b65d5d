//! The [`Backend`] trait and its three implementations (CPU, wgpu, CUDA), plus device selection.
//!
//! Two levels: each backend module exposes low-level functions on its own buffers (`&[f32]`, `wgpu::Buffer`,
//! `CudaSlice<f32>`), and [`Backend`] wraps them behind an associated buffer type for code that is generic over
//! the device (the network, optimisers and trainer).

pub mod cpu;
pub mod cuda;
pub mod plan;
pub mod wgpu;

pub use plan::StreamPlan;

use crate::error::{Error, Result};
use crate::shape::{EmaShape, InfoNceShape, LogitsShape, QueueDType, QueueShape, SymmetricShape};
pub use cpu::InfoNceStats;

/// A device the contrastive ops run on. Every method validates its problem before any device work and
/// returns [`Error`] rather than panicking.
pub trait Backend {
    /// An f32 buffer on the device.
    type Buffer;
    /// A queue `[K, C]` of keys, stored as f32, f16 or bf16.
    type Queue;

    /// Human-readable device name.
    fn name(&self) -> String;
    /// A device buffer holding `data`.
    fn upload(&self, data: &[f32]) -> Result<Self::Buffer>;
    /// A device buffer of `len` elements, filled with NaN (so an unwritten output shows).
    fn alloc_nan(&self, len: usize) -> Result<Self::Buffer> {
        self.upload(&vec![f32::NAN; len])
    }
    /// Copies a buffer to the host.
    fn download(&self, buf: &Self::Buffer) -> Result<Vec<f32>>;
    /// A queue holding `data` (`[K, C]`) converted to `dtype` (round to nearest even).
    fn queue_from_f32(&self, data: &[f32], dtype: QueueDType) -> Result<Self::Queue>;
    /// The queue's contents as f32.
    fn queue_to_f32(&self, queue: &Self::Queue) -> Result<Vec<f32>>;

    /// EMA momentum update `k = m*k + (1-m)*q` over the whole buffer. `k, q: [len]`.
    fn ema_update(&self, k: &mut Self::Buffer, q: &Self::Buffer, momentum: f32) -> Result<()>;
    /// Normalised logits: `l_pos: [N]`, `l_neg: [N, K]` from raw `q, k: [N, C]` and the queue `[K, C]`.
    fn logits(&self, l_pos: &mut Self::Buffer, l_neg: &mut Self::Buffer, q: &Self::Buffer, k: &Self::Buffer, queue: &Self::Queue, shape: &LogitsShape) -> Result<()>;
    /// Fused streaming InfoNCE forward + backward: writes `dq: [N, C]`, `row_loss: [N]`, returns mean loss and acc counts.
    fn infonce(&self, dq: &mut Self::Buffer, row_loss: &mut Self::Buffer, q: &Self::Buffer, k: &Self::Buffer, queue: &Self::Queue, shape: &InfoNceShape) -> Result<InfoNceStats>;
    /// Fused MoCo v3 symmetric loss: writes `dq1, dq2: [N, C]`, returns the loss.
    #[allow(clippy::too_many_arguments)]
    fn moco_v3_loss(&self, dq1: &mut Self::Buffer, dq2: &mut Self::Buffer, q1: &Self::Buffer, q2: &Self::Buffer, k1: &Self::Buffer, k2: &Self::Buffer, shape: &SymmetricShape) -> Result<f32>;
    /// Enqueues raw `keys: [N, C]` (normalised on the way in) at `shape.ptr`, wrapping; returns the new pointer.
    fn enqueue(&self, queue: &mut Self::Queue, keys: &Self::Buffer, shape: &QueueShape) -> Result<usize>;
}

/// The CPU backend (rayon + a fast GEMM). Always available.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

/// A queue in host memory.
#[derive(Clone, Debug)]
pub enum CpuQueue {
    /// f32 storage.
    F32(Vec<f32>),
    /// f16 storage.
    F16(Vec<half::f16>),
    /// bf16 storage.
    BF16(Vec<half::bf16>),
}

impl CpuQueue {
    /// A read-only view.
    pub fn view(&self) -> cpu::QueueView<'_> {
        match self {
            CpuQueue::F32(v) => cpu::QueueView::F32(v),
            CpuQueue::F16(v) => cpu::QueueView::F16(v),
            CpuQueue::BF16(v) => cpu::QueueView::BF16(v),
        }
    }
    /// A mutable view.
    pub fn view_mut(&mut self) -> cpu::QueueViewMut<'_> {
        match self {
            CpuQueue::F32(v) => cpu::QueueViewMut::F32(v),
            CpuQueue::F16(v) => cpu::QueueViewMut::F16(v),
            CpuQueue::BF16(v) => cpu::QueueViewMut::BF16(v),
        }
    }
}

impl Backend for Cpu {
    type Buffer = Vec<f32>;
    type Queue = CpuQueue;
    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }
    fn upload(&self, data: &[f32]) -> Result<Vec<f32>> {
        Ok(data.to_vec())
    }
    fn download(&self, buf: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(buf.clone())
    }
    fn queue_from_f32(&self, data: &[f32], dtype: QueueDType) -> Result<CpuQueue> {
        Ok(match dtype {
            QueueDType::F32 => CpuQueue::F32(data.to_vec()),
            QueueDType::F16 => CpuQueue::F16(data.iter().map(|&v| half::f16::from_f32(v)).collect()),
            QueueDType::BF16 => CpuQueue::BF16(data.iter().map(|&v| half::bf16::from_f32(v)).collect()),
        })
    }
    fn queue_to_f32(&self, queue: &CpuQueue) -> Result<Vec<f32>> {
        let v = queue.view();
        Ok((0..v.len()).map(|i| v.get(i)).collect())
    }
    fn ema_update(&self, k: &mut Vec<f32>, q: &Vec<f32>, momentum: f32) -> Result<()> {
        cpu::ema_update(k, q, momentum)
    }
    fn logits(&self, l_pos: &mut Vec<f32>, l_neg: &mut Vec<f32>, q: &Vec<f32>, k: &Vec<f32>, queue: &CpuQueue, shape: &LogitsShape) -> Result<()> {
        cpu::logits(l_pos, l_neg, q, k, queue.view(), shape)
    }
    fn infonce(&self, dq: &mut Vec<f32>, row_loss: &mut Vec<f32>, q: &Vec<f32>, k: &Vec<f32>, queue: &CpuQueue, shape: &InfoNceShape) -> Result<InfoNceStats> {
        cpu::infonce(dq, row_loss, q, k, queue.view(), shape)
    }
    fn moco_v3_loss(&self, dq1: &mut Vec<f32>, dq2: &mut Vec<f32>, q1: &Vec<f32>, q2: &Vec<f32>, k1: &Vec<f32>, k2: &Vec<f32>, shape: &SymmetricShape) -> Result<f32> {
        cpu::moco_v3_loss(dq1, dq2, q1, q2, k1, k2, shape)
    }
    fn enqueue(&self, queue: &mut CpuQueue, keys: &Vec<f32>, shape: &QueueShape) -> Result<usize> {
        cpu::enqueue(&mut queue.view_mut(), keys, shape)
    }
}

/// The wgpu backend (Vulkan, Metal, DX12; lavapipe in CI).
#[derive(Clone, Debug)]
pub struct Wgpu {
    /// Device, queue and pipeline cache.
    pub ctx: wgpu::WgpuContext,
}

/// An f32 storage buffer with its element count.
#[derive(Debug)]
pub struct WgpuBuffer {
    /// The buffer.
    pub buffer: ::wgpu::Buffer,
    /// Number of f32 elements.
    pub len: usize,
}

impl Wgpu {
    /// Opens a wgpu device; `allow_cpu` accepts a software adapter such as lavapipe.
    pub fn new(allow_cpu: bool) -> Result<Self> {
        Ok(Self { ctx: wgpu::WgpuContext::new(allow_cpu)? })
    }
}

fn check_buf(op: &'static str, name: &str, got: usize, expected: usize) -> Result<()> {
    if got != expected {
        return Err(Error::shape(op, format!("{name} of {expected} elements"), format!("{got} elements")));
    }
    Ok(())
}

impl Backend for Wgpu {
    type Buffer = WgpuBuffer;
    type Queue = wgpu::WgpuQueue;
    fn name(&self) -> String {
        format!("wgpu: {}", self.ctx.adapter_name)
    }
    fn upload(&self, data: &[f32]) -> Result<WgpuBuffer> {
        Ok(WgpuBuffer { buffer: self.ctx.upload("moco buffer", data), len: data.len() })
    }
    fn download(&self, buf: &WgpuBuffer) -> Result<Vec<f32>> {
        self.ctx.read(&buf.buffer, buf.len)
    }
    fn queue_from_f32(&self, data: &[f32], dtype: QueueDType) -> Result<wgpu::WgpuQueue> {
        Ok(wgpu::WgpuQueue::from_f32(&self.ctx, data, dtype))
    }
    fn queue_to_f32(&self, queue: &wgpu::WgpuQueue) -> Result<Vec<f32>> {
        queue.to_f32(&self.ctx)
    }
    fn ema_update(&self, k: &mut WgpuBuffer, q: &WgpuBuffer, momentum: f32) -> Result<()> {
        let shape = EmaShape::new(k.len, momentum)?;
        shape.check(q.len, k.len)?;
        wgpu::ema_update(&self.ctx, &k.buffer, &q.buffer, &shape)
    }
    fn logits(&self, l_pos: &mut WgpuBuffer, l_neg: &mut WgpuBuffer, q: &WgpuBuffer, k: &WgpuBuffer, queue: &wgpu::WgpuQueue, shape: &LogitsShape) -> Result<()> {
        shape.check_inputs(q.len, k.len, queue.len)?;
        shape.check_outputs(l_pos.len, l_neg.len)?;
        wgpu::logits(&self.ctx, &l_pos.buffer, &l_neg.buffer, &q.buffer, &k.buffer, queue, shape)
    }
    fn infonce(&self, dq: &mut WgpuBuffer, row_loss: &mut WgpuBuffer, q: &WgpuBuffer, k: &WgpuBuffer, queue: &wgpu::WgpuQueue, shape: &InfoNceShape) -> Result<InfoNceStats> {
        shape.check_inputs(q.len, k.len, queue.len)?;
        shape.check_outputs(dq.len, row_loss.len)?;
        let out = wgpu::InfoNceBuffers { dq: dq.buffer.clone(), row_loss: row_loss.buffer.clone(), stats: self.ctx.storage_buffer("moco stats", 16) };
        wgpu::infonce(&self.ctx, &out, &q.buffer, &k.buffer, queue, shape)
    }
    fn moco_v3_loss(&self, dq1: &mut WgpuBuffer, dq2: &mut WgpuBuffer, q1: &WgpuBuffer, q2: &WgpuBuffer, k1: &WgpuBuffer, k2: &WgpuBuffer, shape: &SymmetricShape) -> Result<f32> {
        shape.check(&[("q1", q1.len), ("q2", q2.len), ("k1", k1.len), ("k2", k2.len), ("dq1", dq1.len), ("dq2", dq2.len)])?;
        wgpu::moco_v3_loss(&self.ctx, &dq1.buffer, &dq2.buffer, &q1.buffer, &q2.buffer, &k1.buffer, &k2.buffer, shape)
    }
    fn enqueue(&self, queue: &mut wgpu::WgpuQueue, keys: &WgpuBuffer, shape: &QueueShape) -> Result<usize> {
        check_buf("queue_enqueue", "keys", keys.len, shape.n * shape.c)?;
        wgpu::enqueue(&self.ctx, queue, &keys.buffer, shape)
    }
}

/// Which device a [`AnyBackend`] ended up on.
pub enum AnyBackend {
    /// CUDA (a GPU with libcuda present).
    Cuda(cuda::Cuda),
    /// wgpu on a hardware GPU adapter.
    Wgpu(Wgpu),
    /// The CPU.
    Cpu(Cpu),
}

impl AnyBackend {
    /// Picks CUDA, then a wgpu GPU adapter (software adapters do not count), then the CPU.
    /// Each refusal is returned alongside, so a caller can say why a faster device was not used.
    pub fn auto() -> (Self, Vec<Error>) {
        let mut why = Vec::new();
        match cuda::Cuda::new(0) {
            Ok(c) => return (AnyBackend::Cuda(c), why),
            Err(e) => why.push(e),
        }
        match Wgpu::new(false) {
            Ok(w) => return (AnyBackend::Wgpu(w), why),
            Err(e) => why.push(e),
        }
        (AnyBackend::Cpu(Cpu), why)
    }
    /// The backend by name: `cpu`, `wgpu` (any adapter, software included), `cuda`, or `auto`.
    pub fn by_name(name: &str) -> Result<Self> {
        match name {
            "cpu" => Ok(AnyBackend::Cpu(Cpu)),
            "wgpu" => Ok(AnyBackend::Wgpu(Wgpu::new(true)?)),
            "cuda" => Ok(AnyBackend::Cuda(cuda::Cuda::new(0)?)),
            "auto" => Ok(Self::auto().0),
            other => Err(Error::shape("backend", "one of cpu, wgpu, cuda, auto", other.to_string())),
        }
    }
    /// Device name.
    pub fn name(&self) -> String {
        match self {
            AnyBackend::Cuda(b) => b.name(),
            AnyBackend::Wgpu(b) => b.name(),
            AnyBackend::Cpu(b) => b.name(),
        }
    }
}
