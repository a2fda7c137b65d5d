//! EMA momentum update on CUDA (`kernels/ema.cu`): one flat buffer, or a whole list of parameter tensors in one
//! launch (multi-tensor apply).

use super::params::{ema_multi_chunk_map, EmaParams, EMA_CHUNK};
use super::{Ema, EmaShape, KERNELS};
use crate::device::cuda::{cfg, Cuda, Live, MAX_GRID_X};
use crate::error::{Error, Result};
use cudarc::driver::{CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DeviceRepr, PushKernelArg};
use std::sync::Arc;

// SAFETY: #[repr(C)] plain-old-data (u32, u32, f32, f32), the layout of `struct EmaParams` in kernels/ema.cu.
unsafe impl DeviceRepr for EmaParams {}
const _: () = assert!(std::mem::size_of::<EmaParams>() == 16);

/// `k = m*k + (1-m)*q` over `shape.len` elements. `k, q: [len]` f32. Runs asynchronously on `stream`.
///
/// Launches `ema_update` with `min(ceil(len/256), 1024)` blocks of 256 threads (grid-stride loop).
pub fn ema_update(stream: &Arc<CudaStream>, k: &mut CudaViewMut<'_, f32>, q: &CudaView<'_, f32>, shape: &EmaShape) -> Result<()> {
    shape.check(q.len(), k.len())?;
    launch_ema(stream, k, q, shape, Live::Eager)
}

fn launch_ema(stream: &Arc<CudaStream>, k: &mut CudaViewMut<'_, f32>, q: &CudaView<'_, f32>, shape: &EmaShape, live: Live) -> Result<()> {
    let (p, grid) = EmaParams::launch(shape);
    let (live, _) = live.args();
    let f = KERNELS.cuda_function(stream, "ema_update")?;
    // SAFETY: ema_update(EmaParams, const EmaParams* live, const float* q [len], float* k [len]); both slices
    // hold exactly `len` elements (checked by the caller) and every thread touches only indices < len; `live` is
    // null or the device address of a captured step's block for this same length (`Cuda::live`).
    unsafe { stream.launch_builder(&f).arg(&p).arg(&live).arg(q).arg(k).launch(cfg(grid)) }?;
    Ok(())
}

/// The multi-tensor form: `k_i = m*k_i + (1-m)*q_i` for every pair `(k_i, q_i)` of `pairs`, of any lengths
/// (`k_i, q_i: [len_i]`), in one kernel launch. Runs asynchronously on `stream`.
///
/// How it works (apex `multi_tensor_apply` style): every tensor is cut into chunks of [`super::params::EMA_CHUNK`] elements and
/// the host uploads one metadata buffer of u64 words, `[k_ptr, q_ptr, len]` per tensor followed by one word per
/// chunk (`tensor | chunk << 32`); `ema_multi_tensor` runs one 256-thread block per chunk, which reads its chunk
/// word, then its tensor's pointers and length. As on the CPU, an empty pair, a length mismatch or m outside
/// [0, 1] fails before any work.
pub fn ema_update_multi(stream: &Arc<CudaStream>, pairs: &mut [(&mut CudaSlice<f32>, &CudaSlice<f32>)], momentum: f64) -> Result<()> {
    // The validation of the CPU's ema_update_multi: every pair non-empty, of equal lengths, m in [0, 1].
    let (mut m, mut one_minus_m) = (1.0f32, 0.0f32);
    for (i, (k, q)) in pairs.iter().enumerate() {
        let shape = EmaShape::for_buffers(k.len(), q.len(), momentum).map_err(|e| match e {
            Error::Shape { expected, got, .. } => Error::shape("ema_multi", format!("pair {i}: {expected}"), got),
            other => other,
        })?;
        (m, one_minus_m) = shape.weights();
    }
    let lens: Vec<usize> = pairs.iter().map(|(k, _)| k.len()).collect();
    let chunk_map = ema_multi_chunk_map(&lens);
    let n_chunks = chunk_map.len();
    if n_chunks == 0 {
        return Ok(());
    }
    if n_chunks > MAX_GRID_X || pairs.len() > u32::MAX as usize {
        return Err(Error::shape("ema_multi", format!("at most {MAX_GRID_X} chunks of {EMA_CHUNK}"), format!("{n_chunks} chunks")));
    }
    let n_tensors = pairs.len() as u32;
    let mut meta: Vec<u64> = Vec::with_capacity(3 * pairs.len() + n_chunks);
    let mut guards = Vec::with_capacity(2 * pairs.len());
    // The event guards record the kernel's reads and writes of each buffer when dropped after the launch.
    for (k, q) in pairs.iter_mut() {
        let len = k.len() as u64;
        let (kp, kg) = k.device_ptr_mut(stream);
        let (qp, qg) = q.device_ptr(stream);
        meta.extend_from_slice(&[kp, qp, len]);
        guards.push(kg);
        guards.push(qg);
    }
    meta.extend_from_slice(&chunk_map);
    let meta_dev = stream.clone_htod(&meta)?;
    let f = KERNELS.cuda_function(stream, "ema_multi_tensor")?;
    // SAFETY: ema_multi_tensor(const u64* meta, unsigned n_tensors, float m, float one_minus_m). meta holds 3*n_tensors tensor words
    // (live device addresses of the borrowed k (exclusive) and q buffers and their lengths) then exactly one chunk
    // word per block; block b touches elements [chunk*EMA_CHUNK, min(+EMA_CHUNK, len)) of its tensor only. The
    // buffers outlive the launch: `guards` (dropped after it) record the stream's use of them.
    unsafe { stream.launch_builder(&f).arg(&meta_dev).arg(&n_tensors).arg(&m).arg(&one_minus_m).launch(cfg((n_chunks as u32, 1, 1))) }?;
    drop(guards);
    Ok(())
}

impl Ema for Cuda {
    fn ema_update(&mut self, mut k: CudaViewMut<'_, f32>, q: CudaView<'_, f32>, shape: &EmaShape) -> Result<()> {
        shape.check(q.len(), k.len())?;
        match self.live(&EmaParams::launch(shape).0)? {
            Live::Recorded => Ok(()),
            live => launch_ema(self.stream(), &mut k, &q, shape, live),
        }
    }
}
