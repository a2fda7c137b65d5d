//! The CUDA kernels on device memory and streams that PyTorch owns.
//!
//! Every function takes the device ordinal, the raw `CUstream` of PyTorch's current stream on that device
//! (`torch.cuda.current_stream(device).cuda_stream`, 0 for the legacy default stream) and the device addresses of
//! tensors that `moco_torch` has already checked (on that device, contiguous, of the dtype and element count the
//! arguments say). The kernels are queued on that stream and nothing waits for them: they order with PyTorch's own
//! work on the stream, and results (losses, counts) stay in device memory until the caller reads them.
//!
//! How the memory is borrowed: each address becomes a cudarc `CudaSlice` for the duration of the call
//! (`upgrade_device_ptr`) and is handed back unfreed (`leak`) when the call ends, on every path ([`Borrowed`]).
//! The context is the device's primary context, the one PyTorch's runtime uses, with cudarc's event tracking off:
//! the stream alone orders the work, and no event is recorded or waited on. The thread's current context is put
//! back after each call, so PyTorch's idea of the current device does not change.

use moco::ops::ema::cuda as ema_ops;
use moco::ops::infonce::cuda as infonce_ops;
use moco::ops::infonce::STATS_WORDS;
use moco::ops::queue::cuda as queue_ops;
use moco::ops::queue::cuda::{CudaQueue, CudaQueueStorage};
use moco::{InfoNceShape, LogitsShape, Precision, QueueShape, SymmetricShape};
use cudarc::driver::{sys, CudaContext, CudaSlice, CudaStream, DeviceRepr};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use crate::py_err;

/// The primary context of device `ordinal` and the device's name, opened once per process and kept (never
/// released, so the context stays alive for PyTorch too), event tracking off. May leave the context current: callers
/// hold a [`RestoreCurrent`].
fn context(ordinal: usize) -> PyResult<(Arc<CudaContext>, String)> {
    static CONTEXTS: OnceLock<Mutex<HashMap<usize, (Arc<CudaContext>, String)>>> = OnceLock::new();
    let mut contexts = CONTEXTS.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    if let Some(entry) = contexts.get(&ordinal) {
        return Ok(entry.clone());
    }
    let dev = moco::Cuda::new(ordinal).map_err(py_err)?;
    let ctx = dev.context().clone();
    // SAFETY: no CudaSlice of this context exists yet; every buffer used through it is either PyTorch's (ordered by
    // the stream it is used on) or the ops' per-call scratch, allocated, used and freed in order on one stream.
    unsafe { ctx.disable_event_tracking() };
    let entry = (ctx, moco::Device::name(&dev));
    contexts.insert(ordinal, entry.clone());
    Ok(entry)
}

/// Puts the calling thread's current CUDA context back when dropped.
struct RestoreCurrent(Option<sys::CUcontext>);

impl RestoreCurrent {
    fn save() -> PyResult<Self> {
        cudarc::driver::result::ctx::get_current().map(Self).map_err(|e| PyValueError::new_err(format!("CUDA driver: cuCtxGetCurrent failed: {e:?}")))
    }
}

impl Drop for RestoreCurrent {
    fn drop(&mut self) {
        // SAFETY: the saved context was current on this thread when the call began, so it is alive (a context that
        // PyTorch or the user created and did not destroy during a call of ours); null unbinds.
        let _ = unsafe { cudarc::driver::result::ctx::set_current(self.0.unwrap_or(std::ptr::null_mut())) };
    }
}

/// The precision code of the Python layer: 0 `"fp32"`, 1 `"half"`, 2 `"tf32x3"`, 3 `"tf32"` (tensor cores where they
/// apply).
fn precision(code: u32) -> PyResult<Precision> {
    match code {
        0 => Ok(Precision::Fp32),
        1 => Ok(Precision::Half),
        2 => Ok(Precision::Tf32x3),
        3 => Ok(Precision::Tf32),
        p => Err(PyValueError::new_err(format!("precision code 0 (fp32), 1 (half), 2 (tf32x3) or 3 (tf32), got {p}"))),
    }
}

/// One call's view of PyTorch's device and stream.
struct Launch {
    stream: Arc<CudaStream>,
    _restore: RestoreCurrent,
}

impl Launch {
    fn new(device: usize, stream: usize) -> PyResult<Self> {
        // every driver call below needs libcuda, and cudarc panics without it: check first
        moco::device::cuda::check_driver().map_err(py_err)?;
        let restore = RestoreCurrent::save()?;
        let (ctx, _) = context(device)?;
        ctx.bind_to_thread().map_err(|e| PyValueError::new_err(format!("CUDA device {device}: cannot make its context current: {e:?}")))?;
        // SAFETY: `stream` is PyTorch's current stream of this device (so of its primary context), alive during the
        // call; the work queued on it is ordered with PyTorch's by the stream itself.
        let stream = unsafe { ctx.wrap_borrowed_stream(stream as sys::CUstream) };
        Ok(Self { stream, _restore: restore })
    }

    /// `len` elements of `T` at device address `ptr`, borrowed for this call.
    ///
    /// # Safety
    /// `ptr` is the data of a live, contiguous tensor of this device with at least `len` elements of `T`.
    unsafe fn borrow<T: DeviceRepr>(&self, ptr: usize, len: usize) -> Borrowed<T> {
        Borrowed(Some(self.stream.upgrade_device_ptr(ptr as sys::CUdeviceptr, len)))
    }

    /// The queue `[k, c]` stored as `dtype` at `ptr`, borrowed. Safety as [`Launch::borrow`] for `k * c` elements.
    unsafe fn queue(&self, ptr: usize, dtype: u32, k: usize, c: usize) -> PyResult<BorrowedQueue> {
        // CudaQueue::new fails only on an empty or overflowing [k, c], and would then drop (free) the storage:
        // refuse those before borrowing (the shape constructors of every caller already did).
        let len = k.checked_mul(c).filter(|&len| len > 0).ok_or_else(|| PyValueError::new_err(format!("queue: expected a non-empty [K, C], got [{k}, {c}]")))?;
        let ptr = ptr as sys::CUdeviceptr;
        let storage = match dtype {
            0 => CudaQueueStorage::F32(self.stream.upgrade_device_ptr(ptr, len)),
            1 => CudaQueueStorage::F16(self.stream.upgrade_device_ptr(ptr, len)),
            2 => CudaQueueStorage::BF16(self.stream.upgrade_device_ptr(ptr, len)),
            d => return Err(PyValueError::new_err(format!("queue dtype code 0 (f32), 1 (f16) or 2 (bf16), got {d}"))),
        };
        CudaQueue::new(storage, k, c).map(|q| BorrowedQueue(Some(q))).map_err(py_err)
    }
}

/// A device buffer that PyTorch owns, seen as a `CudaSlice` for one call and handed back unfreed when dropped.
struct Borrowed<T>(Option<CudaSlice<T>>);

impl<T> Borrowed<T> {
    fn get(&self) -> &CudaSlice<T> {
        self.0.as_ref().expect("borrowed until dropped")
    }
    fn get_mut(&mut self) -> &mut CudaSlice<T> {
        self.0.as_mut().expect("borrowed until dropped")
    }
}

impl<T> Drop for Borrowed<T> {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            s.leak();
        }
    }
}

/// A queue tensor that PyTorch owns, borrowed for one call.
struct BorrowedQueue(Option<CudaQueue>);

impl Drop for BorrowedQueue {
    fn drop(&mut self) {
        if let Some(q) = self.0.take() {
            match q.into_storage() {
                CudaQueueStorage::F32(s) => {
                    s.leak();
                }
                CudaQueueStorage::F16(s) | CudaQueueStorage::BF16(s) => {
                    s.leak();
                }
            }
        }
    }
}

impl BorrowedQueue {
    fn get(&self) -> &CudaQueue {
        self.0.as_ref().expect("borrowed until dropped")
    }
    fn get_mut(&mut self) -> &mut CudaQueue {
        self.0.as_mut().expect("borrowed until dropped")
    }
}

/// Whether CUDA ops can run: `(true, device name of ordinal 0)` or `(false, why not)` (no driver, no NVRTC, no
/// device). Never raises; leaves the thread's current context as it was.
#[pyfunction]
pub fn cuda_status(py: Python<'_>) -> (bool, String) {
    let status = || -> PyResult<String> {
        moco::device::cuda::check_driver().map_err(py_err)?;
        moco::device::cuda::check_nvrtc().map_err(py_err)?;
        let _restore = RestoreCurrent::save()?;
        Ok(context(0)?.1)
    };
    match status() {
        Ok(name) => (true, name),
        Err(e) => (false, e.value(py).to_string()),
    }
}

/// [`crate::infonce`] on CUDA, asynchronous: writes `dq: [n, c]`, `row_loss: [n]` and `stats: [4]` u32 words (mean
/// loss as f32 bits, acc@1 count, acc@5 count, 0) on the stream; `precision_code` as [`precision`].
#[pyfunction]
#[pyo3(signature = (device, stream, q, k, queue_ptr, dtype, n, c, kk, temperature, dq, row_loss, stats, precision_code = 0))]
#[allow(clippy::too_many_arguments)]
pub fn infonce_cuda(device: usize, stream: usize, q: usize, k: usize, queue_ptr: usize, dtype: u32, n: usize, c: usize, kk: usize, temperature: f64, dq: usize, row_loss: usize, stats: usize, precision_code: u32) -> PyResult<()> {
    let shape = InfoNceShape::new(n, c, kk, temperature as f32).map_err(py_err)?.with_precision(precision(precision_code)?);
    let l = Launch::new(device, stream)?;
    // SAFETY: the Python caller checked every tensor (on `device`, contiguous, dtype, element counts); dq, row_loss
    // and stats are fresh outputs distinct from the inputs.
    unsafe {
        let (q, k, queue) = (l.borrow::<f32>(q, n * c), l.borrow::<f32>(k, n * c), l.queue(queue_ptr, dtype, kk, c)?);
        let (mut dq, mut row_loss, mut stats) = (l.borrow::<f32>(dq, n * c), l.borrow::<f32>(row_loss, n), l.borrow::<u32>(stats, STATS_WORDS));
        infonce_ops::infonce_async(&l.stream, &mut dq.get_mut().as_view_mut(), &mut row_loss.get_mut().as_view_mut(), &mut stats.get_mut().as_view_mut(), &q.get().as_view(), &k.get().as_view(), queue.get(), &shape)
    }
    .map_err(py_err)
}

/// [`crate::logits`] on CUDA, asynchronous: `l_pos: [n]`, `l_neg: [n, kk]`.
#[pyfunction]
#[pyo3(signature = (device, stream, q, k, queue_ptr, dtype, n, c, kk, l_pos, l_neg, precision_code = 0))]
#[allow(clippy::too_many_arguments)]
pub fn logits_cuda(device: usize, stream: usize, q: usize, k: usize, queue_ptr: usize, dtype: u32, n: usize, c: usize, kk: usize, l_pos: usize, l_neg: usize, precision_code: u32) -> PyResult<()> {
    let shape = LogitsShape::new(n, c, kk).map_err(py_err)?.with_precision(precision(precision_code)?);
    let l = Launch::new(device, stream)?;
    // SAFETY: as in `infonce_cuda`; l_pos [n] and l_neg [n*kk] are fresh outputs.
    unsafe {
        let (q, k, queue) = (l.borrow::<f32>(q, n * c), l.borrow::<f32>(k, n * c), l.queue(queue_ptr, dtype, kk, c)?);
        let (mut l_pos, mut l_neg) = (l.borrow::<f32>(l_pos, n), l.borrow::<f32>(l_neg, n * kk));
        infonce_ops::logits(&l.stream, &mut l_pos.get_mut().as_view_mut(), &mut l_neg.get_mut().as_view_mut(), &q.get().as_view(), &k.get().as_view(), queue.get(), &shape)
    }
    .map_err(py_err)
}

/// [`crate::moco_v3_loss`] on CUDA, asynchronous: writes `dq1, dq2: [n, c]` and `stats: [8]` u32 words (the four
/// words of `ctr(q1, k2)`, then those of `ctr(q2, k1)`).
#[pyfunction]
#[pyo3(signature = (device, stream, q1, q2, k1, k2, n, c, temperature, dq1, dq2, stats, precision_code = 0))]
#[allow(clippy::too_many_arguments)]
pub fn moco_v3_loss_cuda(device: usize, stream: usize, q1: usize, q2: usize, k1: usize, k2: usize, n: usize, c: usize, temperature: f64, dq1: usize, dq2: usize, stats: usize, precision_code: u32) -> PyResult<()> {
    let shape = SymmetricShape::new(n, c, temperature as f32).map_err(py_err)?.with_precision(precision(precision_code)?);
    let l = Launch::new(device, stream)?;
    let nc = n * c;
    // SAFETY: as in `infonce_cuda`; dq1, dq2 and stats are distinct fresh outputs.
    unsafe {
        let (q1, q2, k1, k2) = (l.borrow::<f32>(q1, nc), l.borrow::<f32>(q2, nc), l.borrow::<f32>(k1, nc), l.borrow::<f32>(k2, nc));
        let (mut dq1, mut dq2, mut stats) = (l.borrow::<f32>(dq1, nc), l.borrow::<f32>(dq2, nc), l.borrow::<u32>(stats, 2 * STATS_WORDS));
        infonce_ops::moco_v3_loss_async(&l.stream, &mut dq1.get_mut().as_view_mut(), &mut dq2.get_mut().as_view_mut(), &mut stats.get_mut().as_view_mut(), &q1.get().as_view(), &q2.get().as_view(), &k1.get().as_view(), &k2.get().as_view(), &shape)
    }
    .map_err(py_err)
}

/// [`crate::enqueue`] on CUDA, asynchronous; returns the new pointer (computed on the host, no wait).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn enqueue_cuda(device: usize, stream: usize, queue_ptr: usize, dtype: u32, kk: usize, c: usize, keys: usize, n: usize, ptr: usize) -> PyResult<usize> {
    let shape = QueueShape::new(n, c, kk, ptr).map_err(py_err)?;
    let l = Launch::new(device, stream)?;
    // SAFETY: the queue [kk*c] and keys [n*c] are checked, distinct tensors of this device; the queue is written in
    // place.
    unsafe {
        let (mut queue, keys) = (l.queue(queue_ptr, dtype, kk, c)?, l.borrow::<f32>(keys, n * c));
        queue_ops::enqueue(&l.stream, queue.get_mut(), &keys.get().as_view(), &shape)
    }
    .map_err(py_err)
}

/// [`crate::ema`] on CUDA: `k = k * m + q * (1 - m)` over every `(k, q, len)` pair, one multi-tensor launch.
#[pyfunction]
pub fn ema_cuda(device: usize, stream: usize, pairs: Vec<(usize, usize, usize)>, momentum: f64) -> PyResult<()> {
    let l = Launch::new(device, stream)?;
    // SAFETY: each pair is two checked, distinct f32 tensors of this device with `len` elements; the k tensors are
    // distinct from each other.
    let (mut ks, qs): (Vec<Borrowed<f32>>, Vec<Borrowed<f32>>) = pairs.iter().map(|&(k, q, len)| unsafe { (l.borrow::<f32>(k, len), l.borrow::<f32>(q, len)) }).unzip();
    let mut views: Vec<(&mut CudaSlice<f32>, &CudaSlice<f32>)> = ks.iter_mut().zip(&qs).map(|(k, q)| (k.get_mut(), q.get())).collect();
    ema_ops::ema_update_multi(&l.stream, &mut views, momentum).map_err(py_err)
}
