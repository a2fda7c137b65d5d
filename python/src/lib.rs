//! `moco_torch._native`: moco's kernels on memory that PyTorch owns. The CPU functions are here; the CUDA ones
//! (`*_cuda`, on PyTorch's current stream) are in `cuda.rs`. Every function takes the addresses of
//! tensors that `moco_torch` (the Python package) has already checked: on the CPU, contiguous, of the dtype and
//! the element count the arguments say. Nothing is copied; outputs are written in place. The kernels' own shape
//! checks still run (an `Err` becomes a `ValueError` naming what was expected and what was given).
//!
//! Queue storage codes: 0 f32, 1 f16, 2 bf16 (`QueueDType::code`).

use half::{bf16, f16};
use moco::ops::queue::view::{QueueSlice, QueueSliceMut, QueueView, QueueViewMut};
use moco::ops::ema::cpu as ema_cpu;
use moco::ops::health::cpu as health_cpu;
use moco::ops::health::{effective_rank, HealthShape, HEALTH_WORDS};
use moco::ops::infonce::cpu as infonce_cpu;
use moco::ops::queue::cpu as queue_cpu;
use moco::{InfoNceShape, LogitsShape, QueueShape, SymmetricShape};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

#[cfg(feature = "cuda")]
mod cuda;

/// A crate error as a Python exception: shape and value errors, and a device that cannot run (no driver, no
/// NVRTC, no such device), are `ValueError`; the rest `RuntimeError`.
pub(crate) fn py_err(e: moco::Error) -> PyErr {
    match e {
        moco::Error::Shape { .. } | moco::Error::Unavailable(_) => PyValueError::new_err(e.to_string()),
        other => PyRuntimeError::new_err(other.to_string()),
    }
}

/// `len` f32 at `ptr`.
///
/// # Safety
/// `ptr` is the data of a live, contiguous CPU tensor of at least `len` f32 (checked by the Python caller), not
/// written by anything else during the call.
unsafe fn f32s<'a>(ptr: usize, len: usize) -> &'a [f32] {
    if len == 0 {
        return &[];
    }
    std::slice::from_raw_parts(ptr as *const f32, len)
}

/// `len` mutable f32 at `ptr`. Safety as [`f32s`], and no other view of that memory is used during the call.
unsafe fn f32s_mut<'a>(ptr: usize, len: usize) -> &'a mut [f32] {
    if len == 0 {
        return &mut [];
    }
    std::slice::from_raw_parts_mut(ptr as *mut f32, len)
}

/// The queue `[k, c]` stored as `dtype` at `ptr`. Safety as [`f32s`] for `k * c` elements of that type.
unsafe fn queue_view<'a>(ptr: usize, dtype: u32, k: usize, c: usize) -> PyResult<QueueView<'a>> {
    let len = k * c;
    let slice = match dtype {
        0 => QueueSlice::F32(f32s(ptr, len)),
        1 => QueueSlice::F16(std::slice::from_raw_parts(ptr as *const f16, len)),
        2 => QueueSlice::BF16(std::slice::from_raw_parts(ptr as *const bf16, len)),
        d => return Err(PyValueError::new_err(format!("queue dtype code 0 (f32), 1 (f16) or 2 (bf16), got {d}"))),
    };
    QueueView::new(slice, k, c).map_err(py_err)
}

/// The mutable queue `[k, c]` stored as `dtype` at `ptr`. Safety as [`f32s_mut`].
unsafe fn queue_view_mut<'a>(ptr: usize, dtype: u32, k: usize, c: usize) -> PyResult<QueueViewMut<'a>> {
    let len = k * c;
    let slice = match dtype {
        0 => QueueSliceMut::F32(f32s_mut(ptr, len)),
        1 => QueueSliceMut::F16(std::slice::from_raw_parts_mut(ptr as *mut f16, len)),
        2 => QueueSliceMut::BF16(std::slice::from_raw_parts_mut(ptr as *mut bf16, len)),
        d => return Err(PyValueError::new_err(format!("queue dtype code 0 (f32), 1 (f16) or 2 (bf16), got {d}"))),
    };
    QueueViewMut::new(slice, k, c).map_err(py_err)
}

/// Fused InfoNCE forward and backward: `q, k: [n, c]` raw, the queue `[kk, c]`; writes `dq: [n, c]` (the gradient of
/// the mean loss w.r.t. the raw q) and `row_loss: [n]`; returns (mean loss, acc@1 count, acc@5 count).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn infonce(q: usize, k: usize, queue_ptr: usize, dtype: u32, n: usize, c: usize, kk: usize, temperature: f64, dq: usize, row_loss: usize) -> PyResult<(f32, u32, u32)> {
    let shape = InfoNceShape::new(n, c, kk, temperature as f32).map_err(py_err)?;
    // SAFETY: the Python caller checked every tensor (CPU, contiguous, dtype, n*c / kk*c / n elements); dq and
    // row_loss are fresh outputs distinct from the inputs.
    let stats = unsafe { infonce_cpu::infonce(f32s_mut(dq, n * c), f32s_mut(row_loss, n), f32s(q, n * c), f32s(k, n * c), queue_view(queue_ptr, dtype, kk, c)?, &shape) }.map_err(py_err)?;
    Ok((stats.loss, stats.top1, stats.top5))
}

/// Materialised cosine logits: `l_pos: [n]`, `l_neg: [n, kk]` of the normalised q, k against the queue.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn logits(q: usize, k: usize, queue_ptr: usize, dtype: u32, n: usize, c: usize, kk: usize, l_pos: usize, l_neg: usize) -> PyResult<()> {
    let shape = LogitsShape::new(n, c, kk).map_err(py_err)?;
    // SAFETY: as in `infonce`; l_pos [n] and l_neg [n*kk] are fresh outputs.
    unsafe { infonce_cpu::logits(f32s_mut(l_pos, n), f32s_mut(l_neg, n * kk), f32s(q, n * c), f32s(k, n * c), queue_view(queue_ptr, dtype, kk, c)?, &shape) }.map_err(py_err)
}

/// MoCo v3's symmetric loss `ctr(q1, k2) + ctr(q2, k1)`, `ctr = 2T · CE`, forward and backward: all `[n, c]` raw;
/// writes `dq1, dq2`; returns (loss, [acc@1, acc@5 of ctr(q1, k2), acc@1, acc@5 of ctr(q2, k1)]).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn moco_v3_loss(q1: usize, q2: usize, k1: usize, k2: usize, n: usize, c: usize, temperature: f64, dq1: usize, dq2: usize) -> PyResult<(f32, [u32; 4])> {
    let shape = SymmetricShape::new(n, c, temperature as f32).map_err(py_err)?;
    let nc = n * c;
    // SAFETY: as in `infonce`; dq1 and dq2 are distinct fresh outputs.
    let [a, b] = unsafe { infonce_cpu::moco_v3_loss_halves(f32s_mut(dq1, nc), f32s_mut(dq2, nc), f32s(q1, nc), f32s(q2, nc), f32s(k1, nc), f32s(k2, nc), &shape) }.map_err(py_err)?;
    Ok((a.loss + b.loss, [a.top1, a.top5, b.top1, b.top5]))
}

/// Writes the normalised `keys: [n, c]` into the queue `[kk, c]` from row `ptr` on, wrapping; returns the new pointer.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn enqueue(queue_ptr: usize, dtype: u32, kk: usize, c: usize, keys: usize, n: usize, ptr: usize) -> PyResult<usize> {
    let shape = QueueShape::new(n, c, kk, ptr).map_err(py_err)?;
    // SAFETY: the queue [kk*c] and keys [n*c] are checked, distinct tensors; the queue is written in place.
    unsafe {
        let mut view = queue_view_mut(queue_ptr, dtype, kk, c)?;
        queue_cpu::enqueue(&mut view, f32s(keys, n * c), &shape)
    }
    .map_err(py_err)
}

/// `k = k * m + q * (1 - m)` over every `(k, q, len)` pair, as one multi-tensor call.
#[pyfunction]
fn ema(pairs: Vec<(usize, usize, usize)>, momentum: f64) -> PyResult<()> {
    // SAFETY: each pair is two checked, distinct f32 tensors of `len` elements; the k tensors are distinct.
    let mut views: Vec<(&mut [f32], &[f32])> = pairs.iter().map(|&(k, q, len)| unsafe { (f32s_mut(k, len), f32s(q, len)) }).collect();
    ema_cpu::ema_update_multi(&mut views, momentum).map_err(py_err)
}

/// Representation health of the normalised `q_hat, k_hat: [n, c]`: against the queue `[kk, c]` stored as `dtype`,
/// or, with `kk = 0`, MoCo v3's in-batch negatives. Returns the eight statistics (alignment, uniformity, dim_std,
/// pos_mean, neg_mean, neg_max, neg_row_max_mean, gap) and the effective rank.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn health(q_hat: usize, k_hat: usize, queue_ptr: usize, dtype: u32, n: usize, c: usize, kk: usize) -> PyResult<([f32; HEALTH_WORDS], f64)> {
    let shape = if kk == 0 { HealthShape::in_batch(n, c) } else { HealthShape::new(n, c, kk) }.map_err(py_err)?;
    let (mut stats, mut gram) = ([0.0f32; HEALTH_WORDS], vec![0.0f32; shape.gram_len()]);
    // SAFETY: q_hat, k_hat [n*c] and the queue [kk*c] are checked tensors, only read.
    unsafe {
        let (q, k) = (f32s(q_hat, n * c), f32s(k_hat, n * c));
        if kk == 0 {
            health_cpu::health_in_batch(&mut stats, &mut gram, q, k, &shape)
        } else {
            health_cpu::health(&mut stats, &mut gram, q, k, queue_view(queue_ptr, dtype, kk, c)?, &shape)
        }
    }
    .map_err(py_err)?;
    Ok((stats, effective_rank(&gram, &shape).map_err(py_err)?))
}

/// The key encoder's drift `‖θ_k − θ_q‖ / ‖θ_q‖` over lists of `(k, q, len)` parameter tensors.
#[pyfunction]
fn param_drift(pairs: Vec<(usize, usize, usize)>) -> PyResult<f64> {
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for &(k, q, len) in &pairs {
        // SAFETY: checked f32 tensors of `len` elements, only read.
        let (k, q) = unsafe { (f32s(k, len), f32s(q, len)) };
        diff += k.iter().zip(q).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum::<f64>();
        norm += q.iter().map(|&b| (b as f64).powi(2)).sum::<f64>();
    }
    Ok(diff.sqrt() / norm.sqrt())
}

/// The crate's version, for `moco_torch.__version__`'s check.
#[pyfunction]
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(infonce, m)?)?;
    m.add_function(wrap_pyfunction!(logits, m)?)?;
    m.add_function(wrap_pyfunction!(moco_v3_loss, m)?)?;
    m.add_function(wrap_pyfunction!(enqueue, m)?)?;
    m.add_function(wrap_pyfunction!(ema, m)?)?;
    m.add_function(wrap_pyfunction!(health, m)?)?;
    m.add_function(wrap_pyfunction!(param_drift, m)?)?;
    m.add_function(wrap_pyfunction!(version, m)?)?;
    m.add("HAS_CUDA", cfg!(feature = "cuda"))?;
    #[cfg(feature = "cuda")]
    {
        m.add_function(wrap_pyfunction!(cuda::cuda_status, m)?)?;
        m.add_function(wrap_pyfunction!(cuda::infonce_cuda, m)?)?;
        m.add_function(wrap_pyfunction!(cuda::logits_cuda, m)?)?;
        m.add_function(wrap_pyfunction!(cuda::moco_v3_loss_cuda, m)?)?;
        m.add_function(wrap_pyfunction!(cuda::enqueue_cuda, m)?)?;
        m.add_function(wrap_pyfunction!(cuda::ema_cuda, m)?)?;
    }
    Ok(())
}
