//! The [`Backend`] trait and its three implementations (CPU, wgpu, CUDA), plus device selection.
//!
//! Two levels: each backend module exposes low-level functions on its own buffers (`&[f32]`, `wgpu::Buffer`,
//! `CudaSlice<f32>`), and [`Backend`] wraps them behind an associated buffer type for code that is generic over
//! the device (the network, optimisers and trainer). [`Device`] (in [`device`]) is the layer-kernel trait the one
//! network executor ([`crate::nn::ResNet`]) runs on: views of regions of device allocations.

pub mod cpu;
pub mod device;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod plan;
#[doc(hidden)]
pub mod optim_params;
#[cfg(feature = "wgpu")]
pub mod wgpu;

mod cpu_backend;
mod cpu_device;
#[cfg(feature = "cuda")]
mod cuda_device;
#[cfg(feature = "wgpu")]
mod wgpu_backend;
#[cfg(feature = "wgpu")]
mod wgpu_device;

pub use cpu_backend::{Cpu, CpuQueue};
pub use cpu_device::{CpuDevice, CpuNce, CpuOpt, CpuV3Loss};
#[cfg(feature = "cuda")]
pub use cuda_device::{CudaNce, CudaOpt, CudaV3Loss};
pub use device::{Device, MocoDevice, Region};
#[cfg(feature = "wgpu")]
pub use wgpu_device::{WgpuOpt, WgpuV3Loss};
pub use plan::StreamPlan;
#[cfg(feature = "wgpu")]
pub use wgpu_backend::{Adapter, Wgpu, WgpuBuffer};

#[allow(unused_imports)]
use crate::error::{Error, Result};
use crate::shape::{InfoNceShape, LogitsShape, QueueDType, QueueShape, SymmetricShape};
pub use cpu::InfoNceStats;
use std::borrow::{Borrow, BorrowMut};

/// Which kind of device a backend runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// The CPU (rayon + a fast GEMM).
    Cpu,
    /// wgpu (Vulkan, Metal, DX12; lavapipe in CI).
    Wgpu,
    /// CUDA through cudarc.
    Cuda,
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cuda => "cuda",
        })
    }
}

/// A queue `[K, C]` of keys that knows its own K, C and storage type, so an op can reject a queue of the wrong
/// shape even when its element count fits (`[16, 8]` and `[8, 16]` hold as many).
pub trait QueueDims {
    /// Queue length K (keys).
    fn k(&self) -> usize;
    /// Feature dimension C.
    fn c(&self) -> usize;
    /// Storage type.
    fn dtype(&self) -> QueueDType;
}

/// A device the contrastive ops run on. Every method validates its problem (through the one validation of
/// [`crate::shape`], so the error text is the same on every backend) before any device work and returns
/// [`Error`] rather than panicking.
///
/// Buffers are passed as anything that borrows the backend's [`Backend::Buffer`]: on the CPU that is `[f32]`, so a
/// framework's own `&[f32]` / `&mut [f32]` (or a `Vec<f32>`) go in with no copy; on wgpu a [`WgpuBuffer`], on
/// CUDA a `CudaSlice<f32>`.
///
/// ```
/// use moco::{Backend, BackendKind, Cpu, InfoNceShape, QueueDType, QueueShape};
/// let (n, c, k) = (2, 4, 8);
/// // a framework's own storage: sub-slices are read and written in place
/// let (q, key) = (vec![0.5f32; n * c], vec![0.25f32; n * c]);
/// let mut grads = vec![0.0f32; 2 * n * c];
/// let mut row_loss = [0.0f32; 2];
/// let queue_ck: Vec<f32> = (0..c * k).map(|i| (i as f32).sin()).collect();
/// let mut queue = Cpu.queue_from_ck(&queue_ck, c, k, QueueDType::F32)?; // official [C, K] in, [K, C] kept
/// let shape = InfoNceShape::new(n, c, k, 0.2)?;
/// let stats = Cpu.infonce(&mut grads[n * c..], &mut row_loss[..], &q[..], &key[..], &queue, &shape)?;
/// assert!(stats.loss.is_finite() && Cpu.kind() == BackendKind::Cpu);
/// let ptr = Cpu.enqueue(&mut queue, &key[..], &QueueShape::new(n, c, k, 0)?)?;
/// assert_eq!((ptr, Cpu.queue_to_ck(&queue)?.len()), (2, c * k));
/// // a queue of the right element count but the wrong K and C is rejected
/// let transposed = Cpu.queue_from_f32(&vec![0.0; c * k], c, k, QueueDType::F32)?;
/// assert!(Cpu.infonce(&mut grads[..n * c], &mut row_loss[..], &q[..], &key[..], &transposed, &shape).is_err());
/// # Ok::<(), moco::Error>(())
/// ```
pub trait Backend {
    /// An f32 buffer on the device, as the ops borrow it (`[f32]` on the CPU).
    type Buffer: ?Sized;
    /// An owned f32 buffer, as [`Backend::upload`] returns it (`Vec<f32>` on the CPU).
    type OwnedBuffer: BorrowMut<Self::Buffer>;
    /// A queue `[K, C]` of keys, stored as f32, f16 or bf16, that knows its K and C.
    type Queue: QueueDims;

    /// Which kind of device this is.
    fn kind(&self) -> BackendKind;
    /// Human-readable device name.
    fn name(&self) -> String;
    /// A device buffer holding `data`.
    fn upload(&self, data: &[f32]) -> Result<Self::OwnedBuffer>;
    /// A device buffer of `len` elements, filled with NaN (so an unwritten output shows).
    fn alloc_nan(&self, len: usize) -> Result<Self::OwnedBuffer> {
        self.upload(&vec![f32::NAN; len])
    }
    /// Copies a buffer to the host.
    fn download(&self, buf: &(impl Borrow<Self::Buffer> + ?Sized)) -> Result<Vec<f32>>;
    /// A queue of `k` keys of `c` features holding `data` (`[K, C]`, one key per row) converted to `dtype`
    /// (round to nearest even).
    fn queue_from_f32(&self, data: &[f32], k: usize, c: usize, dtype: QueueDType) -> Result<Self::Queue>;
    /// The queue's contents as f32, `[K, C]`.
    fn queue_to_f32(&self, queue: &Self::Queue) -> Result<Vec<f32>>;
    /// A queue from the official MoCo layout `[C, K]` (one key per column, `queue[:, j]`).
    fn queue_from_ck(&self, data_ck: &[f32], c: usize, k: usize, dtype: QueueDType) -> Result<Self::Queue> {
        self.queue_from_f32(&cpu::queue_from_ck(data_ck, c, k)?, k, c, dtype)
    }
    /// The queue's contents as f32 in the official MoCo layout `[C, K]`.
    fn queue_to_ck(&self, queue: &Self::Queue) -> Result<Vec<f32>> {
        cpu::queue_to_ck(&self.queue_to_f32(queue)?, queue.k(), queue.c())
    }

    /// EMA momentum update `k = m*k + (1-m)*q` over the whole buffer, `k, q: [len]`. `m` is an f64 and `1 - m`
    /// is taken in f64 before rounding, as PyTorch does with a Python float.
    fn ema_update(&self, k: &mut (impl BorrowMut<Self::Buffer> + ?Sized), q: &(impl Borrow<Self::Buffer> + ?Sized), momentum: f64) -> Result<()>;
    /// Normalised logits: `l_pos: [N]`, `l_neg: [N, K]` from raw `q, k: [N, C]` and the queue `[K, C]`.
    fn logits(&self, l_pos: &mut (impl BorrowMut<Self::Buffer> + ?Sized), l_neg: &mut (impl BorrowMut<Self::Buffer> + ?Sized), q: &(impl Borrow<Self::Buffer> + ?Sized), k: &(impl Borrow<Self::Buffer> + ?Sized), queue: &Self::Queue, shape: &LogitsShape) -> Result<()>;
    /// Fused streaming InfoNCE forward + backward: writes `dq: [N, C]`, `row_loss: [N]`, returns mean loss and acc counts.
    fn infonce(&self, dq: &mut (impl BorrowMut<Self::Buffer> + ?Sized), row_loss: &mut (impl BorrowMut<Self::Buffer> + ?Sized), q: &(impl Borrow<Self::Buffer> + ?Sized), k: &(impl Borrow<Self::Buffer> + ?Sized), queue: &Self::Queue, shape: &InfoNceShape) -> Result<InfoNceStats>;
    /// Fused MoCo v3 symmetric loss: writes `dq1, dq2: [N, C]`, returns the loss.
    #[allow(clippy::too_many_arguments)]
    fn moco_v3_loss(&self, dq1: &mut (impl BorrowMut<Self::Buffer> + ?Sized), dq2: &mut (impl BorrowMut<Self::Buffer> + ?Sized), q1: &(impl Borrow<Self::Buffer> + ?Sized), q2: &(impl Borrow<Self::Buffer> + ?Sized), k1: &(impl Borrow<Self::Buffer> + ?Sized), k2: &(impl Borrow<Self::Buffer> + ?Sized), shape: &SymmetricShape) -> Result<f32>;
    /// Enqueues raw `keys: [N, C]` (normalised on the way in) at `shape.ptr()`, wrapping; returns the new pointer.
    fn enqueue(&self, queue: &mut Self::Queue, keys: &(impl Borrow<Self::Buffer> + ?Sized), shape: &QueueShape) -> Result<usize>;
}

/// Which device a [`AnyBackend`] ended up on.
pub enum AnyBackend {
    /// CUDA (a GPU with libcuda present).
    #[cfg(feature = "cuda")]
    Cuda(cuda::Cuda),
    /// wgpu on a GPU adapter.
    #[cfg(feature = "wgpu")]
    Wgpu(Wgpu),
    /// The CPU.
    Cpu(Cpu),
}

impl AnyBackend {
    /// Picks CUDA, then a wgpu GPU adapter (software adapters do not count), then the CPU.
    /// Each refusal is returned alongside, so a caller can say why a faster device was not used.
    pub fn auto() -> (Self, Vec<Error>) {
        #[allow(unused_mut)]
        let mut why = Vec::new();
        #[cfg(feature = "cuda")]
        match cuda::Cuda::new(0) {
            Ok(c) => return (AnyBackend::Cuda(c), why),
            Err(e) => why.push(e),
        }
        #[cfg(not(feature = "cuda"))]
        why.push(Error::Unavailable("CUDA: this build has no `cuda` feature".into()));
        #[cfg(feature = "wgpu")]
        match Wgpu::new(Adapter::HardwareOnly) {
            Ok(w) => return (AnyBackend::Wgpu(w), why),
            Err(e) => why.push(e),
        }
        #[cfg(not(feature = "wgpu"))]
        why.push(Error::Unavailable("wgpu: this build has no `wgpu` feature".into()));
        (AnyBackend::Cpu(Cpu), why)
    }
    /// The backend by kind; for wgpu any adapter, software (lavapipe) included.
    pub fn new(kind: BackendKind) -> Result<Self> {
        match kind {
            BackendKind::Cpu => Ok(AnyBackend::Cpu(Cpu)),
            #[cfg(feature = "wgpu")]
            BackendKind::Wgpu => Ok(AnyBackend::Wgpu(Wgpu::new(Adapter::Any)?)),
            #[cfg(feature = "cuda")]
            BackendKind::Cuda => Ok(AnyBackend::Cuda(cuda::Cuda::new(0)?)),
            #[allow(unreachable_patterns)]
            other => Err(Error::Unavailable(format!("{other}: this build of moco has no `{other}` cargo feature"))),
        }
    }
    /// The backend by name: `cpu`, `wgpu` (any adapter, software included), `cuda`, or `auto`.
    pub fn by_name(name: &str) -> Result<Self> {
        match name {
            "cpu" => Self::new(BackendKind::Cpu),
            "wgpu" => Self::new(BackendKind::Wgpu),
            "cuda" => Self::new(BackendKind::Cuda),
            "auto" => Ok(Self::auto().0),
            other => Err(Error::shape("backend", "one of cpu, wgpu, cuda, auto", other.to_string())),
        }
    }
    /// Which kind of device this is.
    pub fn kind(&self) -> BackendKind {
        match self {
            #[cfg(feature = "cuda")]
            AnyBackend::Cuda(_) => BackendKind::Cuda,
            #[cfg(feature = "wgpu")]
            AnyBackend::Wgpu(_) => BackendKind::Wgpu,
            AnyBackend::Cpu(_) => BackendKind::Cpu,
        }
    }
    /// Device name.
    pub fn name(&self) -> String {
        match self {
            #[cfg(feature = "cuda")]
            AnyBackend::Cuda(b) => b.name(),
            #[cfg(feature = "wgpu")]
            AnyBackend::Wgpu(b) => b.name(),
            AnyBackend::Cpu(b) => b.name(),
        }
    }
}
