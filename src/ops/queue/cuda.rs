//! Ring-buffer enqueue on CUDA (`kernels/queue.cu`) and the queue buffer type.

use super::params::QueueParams;
use super::{checked_kc, KeyQueue, QueueDType, QueueShape, KERNELS};
use crate::device::cuda::{cfg, Cuda, Live, Workspace, MAX_GRID_X};
use crate::error::{Error, Result};
use crate::ops::normalize::{cuda::normalize_rows, NormalizeShape};
use cudarc::driver::{CudaSlice, CudaStream, CudaView, DeviceRepr, PushKernelArg};
use std::sync::Arc;

/// A queue `[K, C]` of keys in device memory, one key per row. f16 and bf16 elements are stored as their raw
/// 16-bit patterns (`half::f16::to_bits` / `half::bf16::to_bits`), one element per `u16`.
///
/// The storage of a device queue; a caller wraps buffers it already owns with [`CudaQueue::new`].
#[derive(Debug)]
pub enum CudaQueueStorage {
    /// f32 storage, `K*C` elements.
    F32(CudaSlice<f32>),
    /// IEEE half bit patterns, `K*C` elements.
    F16(CudaSlice<u16>),
    /// bfloat16 bit patterns, `K*C` elements.
    BF16(CudaSlice<u16>),
}

/// A queue `[K, C]` in device memory that knows its K and C.
#[derive(Debug)]
pub struct CudaQueue {
    pub(crate) storage: CudaQueueStorage,
    k: usize,
    c: usize,
}

super::queue_dims!(CudaQueue, |q| CudaQueue::dtype(q));

impl CudaQueue {
    /// Takes `storage` (no copy) as a queue of `k` keys of `c` features; it must hold `K*C` elements.
    pub fn new(storage: CudaQueueStorage, k: usize, c: usize) -> Result<Self> {
        let len = match &storage {
            CudaQueueStorage::F32(b) => b.len(),
            CudaQueueStorage::F16(b) | CudaQueueStorage::BF16(b) => b.len(),
        };
        checked_kc(k, c, Some(len))?;
        Ok(Self { storage, k, c })
    }
    /// Gives the storage back.
    pub fn into_storage(self) -> CudaQueueStorage {
        self.storage
    }
    /// Uploads f32 values `[K, C]`, converting to `dtype` on the host (round to nearest even).
    pub fn from_f32(stream: &Arc<CudaStream>, values: &[f32], k: usize, c: usize, dtype: QueueDType) -> Result<Self> {
        checked_kc(k, c, Some(values.len()))?;
        let storage = match dtype {
            QueueDType::F32 => CudaQueueStorage::F32(stream.clone_htod(values)?),
            QueueDType::F16 => CudaQueueStorage::F16(stream.clone_htod(&values.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect::<Vec<u16>>())?),
            QueueDType::BF16 => CudaQueueStorage::BF16(stream.clone_htod(&values.iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect::<Vec<u16>>())?),
        };
        Self::new(storage, k, c)
    }
    /// Copies the queue back to the host as f32 (waits for the stream).
    pub fn to_f32(&self, stream: &Arc<CudaStream>) -> Result<Vec<f32>> {
        let out = match &self.storage {
            CudaQueueStorage::F32(b) => stream.clone_dtoh(b)?,
            CudaQueueStorage::F16(b) => stream.clone_dtoh(b)?.into_iter().map(|v| half::f16::from_bits(v).to_f32()).collect(),
            CudaQueueStorage::BF16(b) => stream.clone_dtoh(b)?.into_iter().map(|v| half::bf16::from_bits(v).to_f32()).collect(),
        };
        stream.synchronize()?;
        Ok(out)
    }
    /// Storage type.
    pub fn dtype(&self) -> QueueDType {
        match &self.storage {
            CudaQueueStorage::F32(_) => QueueDType::F32,
            CudaQueueStorage::F16(_) => QueueDType::F16,
            CudaQueueStorage::BF16(_) => QueueDType::BF16,
        }
    }
    /// Number of elements (`K*C`).
    pub fn len(&self) -> usize {
        match &self.storage {
            CudaQueueStorage::F32(b) => b.len(),
            CudaQueueStorage::F16(b) | CudaQueueStorage::BF16(b) => b.len(),
        }
    }
    /// True when the queue holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The dtype code of the kernels (`dtype` of `QueueParams`): 0 f32, 1 f16, 2 bf16.
    pub(crate) fn code(&self) -> u32 {
        self.dtype().code()
    }
}

// SAFETY: #[repr(C)] plain-old-data of eight u32, the layout of `struct QueueParams` in kernels/queue.cu.
unsafe impl DeviceRepr for QueueParams {}
const _: () = assert!(std::mem::size_of::<QueueParams>() == 32 && std::mem::align_of::<QueueParams>() == 4);

/// Writes `keys: [N, C]` (raw f32; L2-normalised here) into rows `ptr, ptr+1, ... (mod K)` of `queue: [K, C]` and
/// returns the new pointer `(ptr + N) % K`. Runs asynchronously on `stream`.
///
/// Launches `normalize_rows` (grid N) then `enqueue_f32` (one thread per element of the keys) or
/// `enqueue_packed16` (one thread per element pair of the written range), 256 threads per block.
pub fn enqueue(stream: &Arc<CudaStream>, queue: &mut CudaQueue, keys: &CudaView<'_, f32>, shape: &QueueShape) -> Result<usize> {
    enqueue_in(stream, &mut Workspace::default(), queue, keys, shape, Live::Eager)
}

/// [`enqueue`] with its scratch (the normalised keys and their norms) from `ws`, run as `live` says (a captured
/// step's parameter block, see [`Cuda::live`]: the pointer moves every step, so the grid then covers any pointer).
fn enqueue_in(stream: &Arc<CudaStream>, ws: &mut Workspace, queue: &mut CudaQueue, keys: &CudaView<'_, f32>, shape: &QueueShape, live: Live) -> Result<usize> {
    shape.check_enqueue(keys.len(), queue.len(), queue)?;
    let p = QueueParams::new(shape, queue.code());
    let blocks = match live {
        Live::Recorded => return Ok(shape.next_ptr()),
        Live::Eager => p.grid(),
        Live::Capture { .. } => p.grid_for_any_ptr(),
    };
    if blocks.0 as usize > MAX_GRID_X {
        return Err(Error::shape("queue_enqueue", format!("at most {} blocks", MAX_GRID_X), format!("{} blocks", blocks.0)));
    }
    let [mut kh, mut inv] = ws.f32s.take(stream, [shape.n * shape.c, shape.n])?;
    normalize_rows(stream, &mut kh, &mut inv, keys, &NormalizeShape::new(shape.n, shape.c)?)?;
    let kh = kh.into_view();
    let (live, skip) = live.args();
    let grid = cfg(blocks);
    match &mut queue.storage {
        CudaQueueStorage::F32(q) => {
            let f = KERNELS.cuda_function(stream, "enqueue_f32")?;
            // SAFETY: enqueue_f32(QueueParams, const QueueParams* live, const unsigned* skip, const float* kh [N*C],
            // float* queue [K*C]); threads idx < N*C read kh[idx] and write row (ptr + idx/C) % K < K of the queue,
            // all in bounds (shape.check above). `live` and `skip` are null or a captured step's block for this same
            // shape at another pointer and its count word (`Cuda::live`).
            unsafe { stream.launch_builder(&f).arg(&p).arg(&live).arg(&skip).arg(&kh).arg(q).launch(grid) }?;
        }
        CudaQueueStorage::F16(q) | CudaQueueStorage::BF16(q) => {
            let f = KERNELS.cuda_function(stream, "enqueue_packed16")?;
            // SAFETY: enqueue_packed16(QueueParams, const QueueParams* live, const unsigned* skip, const float* kh
            // [N*C], unsigned short* queue [K*C]); thread t handles elements 2w, 2w+1 and stores only those inside
            // its segment of the written range (< K*C), so it reads kh only at rows r < N; threads past `total`
            // return. `live` and `skip` as for enqueue_f32.
            unsafe { stream.launch_builder(&f).arg(&p).arg(&live).arg(&skip).arg(&kh).arg(q).launch(grid) }?;
        }
    }
    Ok(shape.next_ptr())
}

impl KeyQueue for Cuda {
    type Queue = CudaQueue;
    fn queue_from_f32(&mut self, data: &[f32], k: usize, c: usize, dtype: QueueDType) -> Result<CudaQueue> {
        CudaQueue::from_f32(self.stream(), data, k, c, dtype)
    }
    fn queue_to_f32(&self, queue: &CudaQueue) -> Result<Vec<f32>> {
        queue.to_f32(self.stream())
    }
    fn enqueue(&mut self, queue: &mut CudaQueue, keys: CudaView<'_, f32>, shape: &QueueShape) -> Result<usize> {
        shape.check_enqueue(keys.len(), queue.len(), queue)?;
        let live = self.live(&QueueParams::new(shape, queue.code()))?;
        let (stream, ws) = self.workspace();
        enqueue_in(&stream, ws, queue, &keys, shape, live)
    }
}
