//! The queue of negative keys: `[K, C]`, one L2-normalised key per row (the official MoCo code keeps `[C, K]`; see
//! [`view::queue_from_ck`]), stored as f32, f16 or bf16, and the ring-buffer enqueue that writes a batch of keys
//! at the pointer, normalising them on the way in, for any `N <= K`, wrapping around.
//!
//! | | |
//! |---|---|
//! | shapes | [`QueueShape`] (an enqueue), [`QueueDType`], [`QueueDims`] (what a queue knows of itself) |
//! | CPU | [`CpuQueue`], [`cpu::enqueue`] on a [`QueueViewMut`] |
//! | wgpu | `WgpuQueue`, `wgpu::enqueue` (`shaders/queue.wgsl`, f16/bf16 packed two per u32 word) |
//! | CUDA | `CudaQueue`, `cuda::enqueue` (`kernels/queue.cu`) |
//! | reference | [`reference::enqueue`] (f64) |
//!
//! Every constructor and conversion takes the queue's dimensions in the order `k, c` (K keys of C features),
//! whatever the layout of the data it reads.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod params;
pub mod reference;
pub mod view;
#[cfg(feature = "wgpu")]
pub mod wgpu;

pub use cpu::{CpuQueue, CpuQueueStorage};
pub use view::{queue_from_ck, queue_to_ck, QueueSlice, QueueSliceMut, QueueView, QueueViewMut};

use crate::device::Device;
use crate::error::{Error, Result};
use crate::ops::check::{fits_u32, getters, lens, positives};

pub(crate) const KERNELS: crate::ops::KernelFamily = crate::device::kernel_family::kernel_family!("queue");

/// Storage type of the queue of negative keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QueueDType {
    /// 32-bit float, 4 bytes per element.
    F32,
    /// IEEE half, 2 bytes per element (`half::f16`).
    F16,
    /// bfloat16, 2 bytes per element (`half::bf16`).
    BF16,
}

impl QueueDType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            QueueDType::F32 => 4,
            QueueDType::F16 | QueueDType::BF16 => 2,
        }
    }
    /// Lower-case name used in kernel names (`f32`, `f16`, `bf16`).
    pub fn name(self) -> &'static str {
        match self {
            QueueDType::F32 => "f32",
            QueueDType::F16 => "f16",
            QueueDType::BF16 => "bf16",
        }
    }
    /// The code the kernels use for it (`QUEUE_DTYPE` in WGSL, the kernel-name suffix in CUDA): 0 f32, 1 f16,
    /// 2 bf16.
    pub fn code(self) -> u32 {
        match self {
            QueueDType::F32 => 0,
            QueueDType::F16 => 1,
            QueueDType::BF16 => 2,
        }
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

/// [`QueueDims`] for a queue type that keeps its K and C in fields `k` and `c`; the storage type is `$dtype`, an
/// expression of the queue `$q`.
macro_rules! queue_dims {
    ($t:ty, |$q:ident| $dtype:expr) => {
        impl $crate::ops::queue::QueueDims for $t {
            fn k(&self) -> usize {
                self.k
            }
            fn c(&self) -> usize {
                self.c
            }
            fn dtype(&self) -> $crate::ops::queue::QueueDType {
                let $q = self;
                $dtype
            }
        }
    };
}
pub(crate) use queue_dims;

/// `K*C` for a queue of `k` keys of `c` features, both >= 1, optionally checked against a given element count.
pub fn checked_kc(k: usize, c: usize, given: Option<usize>) -> Result<usize> {
    let kc = k.checked_mul(c).filter(|_| k > 0 && c > 0);
    match (kc, given) {
        (Some(kc), None) => Ok(kc),
        (Some(kc), Some(g)) if g == kc => Ok(kc),
        _ => Err(Error::shape("queue", format!("K, C >= 1 and K*C = {} elements", k.saturating_mul(c)), format!("K = {k}, C = {c}{}", given.map(|g| format!(", {g} elements")).unwrap_or_default()))),
    }
}

/// A queue's own K and C must be the problem's: a `[16, 8]` queue has as many elements as an `[8, 16]` one.
pub(crate) fn check_queue_dims(op: &'static str, (k, c): (usize, usize), queue: &impl QueueDims) -> Result<()> {
    if (k, c) != (queue.k(), queue.c()) {
        return Err(Error::shape(op, format!("a queue of K = {k} keys of C = {c}"), format!("a queue of K = {}, C = {}", queue.k(), queue.c())));
    }
    Ok(())
}

/// Ring-buffer enqueue of N keys into a queue `[K, C]` at row `ptr`, wrapping around.
///
/// ```compile_fail,E0451
/// let s = moco::QueueShape::new(4, 8, 16, 0).unwrap();
/// let bad = moco::QueueShape { ptr: 99, ..s };
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueShape {
    n: usize,
    c: usize,
    k: usize,
    ptr: usize,
}

getters!(QueueShape { /** Keys written, N. */ n: usize, /** Feature dimension C. */ c: usize, /** Queue length K. */ k: usize, /** Row of the first write. */ ptr: usize });

impl QueueShape {
    /// Validates 1 <= N <= K, C >= 1 and ptr < K.
    pub fn new(n: usize, c: usize, k: usize, ptr: usize) -> Result<Self> {
        let op = "queue_enqueue";
        positives(op, &[("N", n), ("C", c)])?;
        if k < n {
            return Err(Error::shape(op, format!("queue length K >= batch N = {n}"), format!("K = {k}")));
        }
        fits_u32(op, "K*C", k.saturating_mul(c))?;
        if ptr >= k {
            return Err(Error::shape(op, format!("pointer < K = {k}"), format!("ptr = {ptr}")));
        }
        Ok(Self { n, c, k, ptr })
    }
    /// The pointer after the write: `(ptr + N) % K`.
    pub fn next_ptr(&self) -> usize {
        (self.ptr + self.n) % self.k
    }
    /// Checks the key and queue lengths (elements).
    pub fn check(&self, keys: usize, queue: usize) -> Result<()> {
        lens("queue_enqueue", &[("keys [N*C]", self.n * self.c, keys), ("queue [K*C]", self.k * self.c, queue)])
    }
    /// Checks a queue's own K and C against the problem's.
    pub fn check_queue(&self, queue: &impl QueueDims) -> Result<()> {
        check_queue_dims("queue_enqueue", (self.k, self.c), queue)
    }
    /// The checks of every device's enqueue: the key and queue lengths ([`QueueShape::check`], `queue_len` in
    /// elements), then the queue's own K and C ([`QueueShape::check_queue`]).
    pub(crate) fn check_enqueue(&self, keys: usize, queue_len: usize, queue: &impl QueueDims) -> Result<()> {
        self.check(keys, queue_len)?;
        self.check_queue(queue)
    }
}

/// The queue of keys on a device: its storage, conversions, and the enqueue.
pub trait KeyQueue: Device {
    /// A queue `[K, C]` in device memory, in its storage type ([`CpuQueue`], `WgpuQueue`, `CudaQueue`).
    type Queue: QueueDims;

    /// A queue of `k` keys of `c` features holding `data` (`[K, C]`, one key per row) converted to `dtype`
    /// (round to nearest even).
    fn queue_from_f32(&mut self, data: &[f32], k: usize, c: usize, dtype: QueueDType) -> Result<Self::Queue>;
    /// The queue's contents as f32, `[K, C]`.
    fn queue_to_f32(&self, queue: &Self::Queue) -> Result<Vec<f32>>;
    /// A queue of `k` keys of `c` features from the official MoCo layout `[C, K]` (one key per column,
    /// `queue[:, j]`).
    fn queue_from_ck(&mut self, data_ck: &[f32], k: usize, c: usize, dtype: QueueDType) -> Result<Self::Queue> {
        self.queue_from_f32(&view::queue_from_ck(data_ck, k, c)?, k, c, dtype)
    }
    /// The queue's contents as f32 in the official MoCo layout `[C, K]`.
    fn queue_to_ck(&self, queue: &Self::Queue) -> Result<Vec<f32>> {
        view::queue_to_ck(&self.queue_to_f32(queue)?, queue.k(), queue.c())
    }
    /// Enqueues raw `keys: [N, C]` (normalised on the way in) at `shape.ptr()`, wrapping; returns the new pointer.
    fn enqueue(&mut self, queue: &mut Self::Queue, keys: Self::Ref<'_>, shape: &QueueShape) -> Result<usize>;
}
