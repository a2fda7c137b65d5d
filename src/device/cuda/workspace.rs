//! Device scratch that an op reuses from call to call: one growing allocation per element type, carved into the
//! views one call needs. The ops of a device run in order on its one stream, so a call's scratch is free again
//! for the next call once its kernels are queued: stream order puts the next writer after the last reader. After
//! the first step has grown it, a training step allocates nothing (a step that allocates cannot be captured in a
//! CUDA graph, and every `cuMemAllocAsync`/`cuMemFreeAsync` pair costs two events in cudarc).
//!
//! Growth frees the old allocation in stream order (cudarc's `cuMemFreeAsync`), after the kernels queued on it.
//! With [`super::Cuda::set_scratch_poison`] every hand-out is first filled with 0xFF bytes (NaN as f32), as a new
//! allocation is on the emulated driver, so a kernel that reads scratch it did not write shows NaN in tests.

use crate::error::{Error, Result};
use cudarc::driver::{CudaSlice, CudaStream, CudaViewMut, DevicePtrMut, DeviceRepr, ValidAsZeroBits};
use std::sync::Arc;

/// Element alignment of each carved view: 256 bytes, as `cuMemAlloc` aligns an allocation (the tensor-core
/// kernels load 16-byte pieces; the vectorised ones 8 or 16).
const ALIGN_BYTES: usize = 256;

/// Counts the growths of the workspaces of one device and its clones: a captured step holds the addresses of the
/// scratch it used, so a growth after its capture (a larger op outside the step) means it must be captured again
/// ([`super::graph`]).
pub(crate) type Growths = Arc<std::sync::atomic::AtomicU64>;

/// One element type's growing allocation.
#[derive(Debug)]
pub(crate) struct Arena<T: DeviceRepr> {
    buf: Option<CudaSlice<T>>,
    poison: bool,
    growths: Growths,
}

impl<T: DeviceRepr> Default for Arena<T> {
    fn default() -> Self {
        Self { buf: None, poison: false, growths: Default::default() }
    }
}

impl<T: DeviceRepr + ValidAsZeroBits> Arena<T> {
    /// `N` disjoint views of `lens[i]` elements, each starting 256-byte aligned, valid until the next `take`.
    /// Their contents are whatever the last call left (0xFF bytes under the poison switch): every kernel that uses
    /// them writes before it reads, or the caller zeroes them.
    pub(crate) fn take<const N: usize>(&mut self, stream: &Arc<CudaStream>, lens: [usize; N]) -> Result<[CudaViewMut<'_, T>; N]> {
        let align = (ALIGN_BYTES / std::mem::size_of::<T>().max(1)).max(1);
        let mut starts = [0usize; N];
        let mut total = 0usize;
        for (s, &len) in starts.iter_mut().zip(&lens) {
            *s = total;
            total = len.div_ceil(align).checked_mul(align).and_then(|l| total.checked_add(l)).ok_or_else(|| Error::shape("cuda scratch", "a scratch size that fits in memory", format!("{lens:?} elements")))?;
        }
        if self.buf.as_ref().is_none_or(|b| b.len() < total) {
            // grow by at least half again, so that a run of slightly larger requests does not reallocate each time
            let grown = total.max(self.buf.as_ref().map_or(0, |b| b.len() + b.len() / 2));
            self.buf = None;
            self.buf = Some(stream.alloc_zeros::<T>(grown.max(1))?);
            self.growths.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let buf = self.buf.as_mut().ok_or_else(|| Error::Cuda("scratch allocation missing after growth".into()))?;
        if self.poison && total > 0 {
            let bytes = total * std::mem::size_of::<T>();
            let (ptr, _record) = buf.device_ptr_mut(stream);
            // SAFETY: `ptr` is the start of a live allocation of at least `total` elements (grown above) on this
            // stream's context; the memset is queued on `stream`, ordered after every kernel queued before it.
            unsafe { cudarc::driver::result::memset_d8_async(ptr, 0xFF, bytes, stream.cu_stream()) }.map_err(|e| Error::Cuda(format!("poisoning scratch: {e:?}")))?;
        }
        let mut rest = buf.slice_mut(0..total);
        let mut out: Vec<CudaViewMut<'_, T>> = Vec::with_capacity(N);
        let mut at = 0usize;
        for (i, &len) in lens.iter().enumerate() {
            let end = starts.get(i + 1).copied().unwrap_or(total);
            let (piece, tail) = split(rest, end - at)?;
            let (view, _pad) = split(piece, len)?;
            out.push(view);
            (rest, at) = (tail, end);
        }
        out.try_into().map_err(|_| Error::Cuda("scratch views: wrong count".into()))
    }
}

/// Splits `v` at `mid`, both halves living as long as `v` did (see `super::split_off`).
fn split<'a, T: DeviceRepr>(mut v: CudaViewMut<'a, T>, mid: usize) -> Result<(CudaViewMut<'a, T>, CudaViewMut<'a, T>)> {
    let len = v.len();
    let (a, b) = v.try_split_at_mut(mid).ok_or_else(|| Error::Cuda(format!("scratch split at {mid} of {len}")))?;
    // SAFETY: as `super::split_off`: the halves hold the pointer, length and shared references of `v`, which is
    // consumed, cover disjoint elements, and have no `Drop`; only the borrow of the local is lengthened.
    Ok(unsafe { (std::mem::transmute::<CudaViewMut<'_, T>, CudaViewMut<'a, T>>(a), std::mem::transmute::<CudaViewMut<'_, T>, CudaViewMut<'a, T>>(b)) })
}

/// The scratch of one device, per element type (f32 values, u32 counts, u16 rounded operands, u64 pointer tables).
#[derive(Debug, Default)]
pub(crate) struct Workspace {
    pub f32s: Arena<f32>,
    pub u32s: Arena<u32>,
    pub u16s: Arena<u16>,
}

impl Workspace {
    pub(crate) fn set_poison(&mut self, on: bool) {
        (self.f32s.poison, self.u32s.poison, self.u16s.poison) = (on, on, on);
    }
    /// Counts this workspace's growths in `growths` (the device's, shared by its clones).
    pub(crate) fn set_growths(&mut self, growths: &Growths) {
        if !Arc::ptr_eq(&self.f32s.growths, growths) {
            (self.f32s.growths, self.u32s.growths, self.u16s.growths) = (growths.clone(), growths.clone(), growths.clone());
        }
    }
}
