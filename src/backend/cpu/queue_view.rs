//! Borrowed views of a queue `[K, C]` in any of its storage types.

use crate::shape::QueueDType;
use half::{bf16, f16, slice::HalfFloatSliceExt};

/// A read-only queue `[K, C]` row-major (one key per row), in f32, f16 or bf16.
#[derive(Clone, Copy, Debug)]
pub enum QueueView<'a> {
    /// f32 storage.
    F32(&'a [f32]),
    /// f16 storage.
    F16(&'a [f16]),
    /// bf16 storage.
    BF16(&'a [bf16]),
}

/// A mutable queue `[K, C]` row-major, in f32, f16 or bf16.
#[derive(Debug)]
pub enum QueueViewMut<'a> {
    /// f32 storage.
    F32(&'a mut [f32]),
    /// f16 storage.
    F16(&'a mut [f16]),
    /// bf16 storage.
    BF16(&'a mut [bf16]),
}

impl<'a> QueueView<'a> {
    /// Number of elements (K*C).
    pub fn len(&self) -> usize {
        match self {
            QueueView::F32(s) => s.len(),
            QueueView::F16(s) => s.len(),
            QueueView::BF16(s) => s.len(),
        }
    }
    /// True when the queue holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Storage type.
    pub fn dtype(&self) -> QueueDType {
        match self {
            QueueView::F32(_) => QueueDType::F32,
            QueueView::F16(_) => QueueDType::F16,
            QueueView::BF16(_) => QueueDType::BF16,
        }
    }
    /// Element `idx` as f32.
    pub fn get(&self, idx: usize) -> f32 {
        match self {
            QueueView::F32(s) => s[idx],
            QueueView::F16(s) => s[idx].to_f32(),
            QueueView::BF16(s) => s[idx].to_f32(),
        }
    }
    /// Elements `[start, start+len)` as f32: borrowed for f32 storage, converted into `scratch` otherwise.
    pub fn range_f32<'s>(&'s self, start: usize, len: usize, scratch: &'s mut Vec<f32>) -> &'s [f32] {
        match self {
            QueueView::F32(s) => &s[start..start + len],
            QueueView::F16(s) => {
                scratch.resize(len, 0.0);
                s[start..start + len].convert_to_f32_slice(scratch);
                &scratch[..]
            }
            QueueView::BF16(s) => {
                scratch.resize(len, 0.0);
                s[start..start + len].convert_to_f32_slice(scratch);
                &scratch[..]
            }
        }
    }
}

impl<'a> QueueViewMut<'a> {
    /// Number of elements (K*C).
    pub fn len(&self) -> usize {
        match self {
            QueueViewMut::F32(s) => s.len(),
            QueueViewMut::F16(s) => s.len(),
            QueueViewMut::BF16(s) => s.len(),
        }
    }
    /// True when the queue holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Writes `v` at `idx`, rounding to nearest-even for the 16-bit types.
    pub fn set(&mut self, idx: usize, v: f32) {
        match self {
            QueueViewMut::F32(s) => s[idx] = v,
            QueueViewMut::F16(s) => s[idx] = f16::from_f32(v),
            QueueViewMut::BF16(s) => s[idx] = bf16::from_f32(v),
        }
    }
    /// A read-only view of the same storage.
    pub fn as_view(&self) -> QueueView<'_> {
        match self {
            QueueViewMut::F32(s) => QueueView::F32(s),
            QueueViewMut::F16(s) => QueueView::F16(s),
            QueueViewMut::BF16(s) => QueueView::BF16(s),
        }
    }
}

/// Converts a queue from the official MoCo layout `[C, K]` (one key per column, `queue[:, j]`) to this crate's
/// `[K, C]` layout (one key per row), which makes enqueue a contiguous write and streams whole keys.
pub fn queue_from_ck(queue_ck: &[f32], c: usize, k: usize) -> crate::Result<Vec<f32>> {
    crate::shape::checked_kc(k, c, Some(queue_ck.len()))?;
    let mut out = vec![0.0; c * k];
    for ci in 0..c {
        for j in 0..k {
            out[j * c + ci] = queue_ck[ci * k + j];
        }
    }
    Ok(out)
}

/// Converts a queue from this crate's `[K, C]` layout (one key per row) back to the official `[C, K]`.
pub fn queue_to_ck(queue_kc: &[f32], k: usize, c: usize) -> crate::Result<Vec<f32>> {
    crate::shape::checked_kc(k, c, Some(queue_kc.len()))?;
    let mut out = vec![0.0; c * k];
    for j in 0..k {
        for ci in 0..c {
            out[ci * k + j] = queue_kc[j * c + ci];
        }
    }
    Ok(out)
}
