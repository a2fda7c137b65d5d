//! Borrowed views of a queue `[K, C]` in any of its storage types: a [`QueueSlice`] (the elements) with the
//! queue's K and C, so a view of a `[16, 8]` queue is refused by an op on an `[8, 16]` problem although both hold
//! 128 elements. A framework's own slices go in without a copy: `QueueView::new(QueueSlice::F32(&data), k, c)`.

use super::{checked_kc, QueueDType};
use crate::error::Result;
use half::{bf16, f16, slice::HalfFloatSliceExt};

/// The elements of a queue `[K, C]` row-major (one key per row), in f32, f16 or bf16.
#[derive(Clone, Copy, Debug)]
pub enum QueueSlice<'a> {
    /// f32 storage.
    F32(&'a [f32]),
    /// f16 storage.
    F16(&'a [f16]),
    /// bf16 storage.
    BF16(&'a [bf16]),
}

/// The elements of a mutable queue `[K, C]` row-major, in f32, f16 or bf16.
#[derive(Debug)]
pub enum QueueSliceMut<'a> {
    /// f32 storage.
    F32(&'a mut [f32]),
    /// f16 storage.
    F16(&'a mut [f16]),
    /// bf16 storage.
    BF16(&'a mut [bf16]),
}

impl<'a> QueueSlice<'a> {
    /// Number of elements (K*C).
    pub fn len(&self) -> usize {
        match self {
            QueueSlice::F32(s) => s.len(),
            QueueSlice::F16(s) => s.len(),
            QueueSlice::BF16(s) => s.len(),
        }
    }
    /// True when the queue holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Storage type.
    pub fn dtype(&self) -> QueueDType {
        match self {
            QueueSlice::F32(_) => QueueDType::F32,
            QueueSlice::F16(_) => QueueDType::F16,
            QueueSlice::BF16(_) => QueueDType::BF16,
        }
    }
    /// Element `idx` as f32.
    pub fn get(&self, idx: usize) -> f32 {
        match self {
            QueueSlice::F32(s) => s[idx],
            QueueSlice::F16(s) => s[idx].to_f32(),
            QueueSlice::BF16(s) => s[idx].to_f32(),
        }
    }
    /// Elements `[start, start+len)` as f32: borrowed for f32 storage, converted into `scratch` otherwise.
    pub fn range_f32<'s>(&'s self, start: usize, len: usize, scratch: &'s mut Vec<f32>) -> &'s [f32] {
        match self {
            QueueSlice::F32(s) => &s[start..start + len],
            QueueSlice::F16(s) => widen_into(&s[start..start + len], scratch),
            QueueSlice::BF16(s) => widen_into(&s[start..start + len], scratch),
        }
    }
}

/// `src` converted to f32 into `scratch` (resized to its length).
fn widen_into<'s, H>(src: &[H], scratch: &'s mut Vec<f32>) -> &'s [f32]
where
    [H]: HalfFloatSliceExt,
{
    scratch.resize(src.len(), 0.0);
    src.convert_to_f32_slice(scratch);
    &scratch[..]
}

impl<'a> QueueSliceMut<'a> {
    /// Number of elements (K*C).
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }
    /// True when the queue holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Writes `v` at `idx`, rounding to nearest-even for the 16-bit types.
    pub fn set(&mut self, idx: usize, v: f32) {
        match self {
            QueueSliceMut::F32(s) => s[idx] = v,
            QueueSliceMut::F16(s) => s[idx] = f16::from_f32(v),
            QueueSliceMut::BF16(s) => s[idx] = bf16::from_f32(v),
        }
    }
    /// Storage type.
    pub fn dtype(&self) -> QueueDType {
        self.as_slice().dtype()
    }
    /// A read-only slice of the same storage.
    pub fn as_slice(&self) -> QueueSlice<'_> {
        match self {
            QueueSliceMut::F32(s) => QueueSlice::F32(s),
            QueueSliceMut::F16(s) => QueueSlice::F16(s),
            QueueSliceMut::BF16(s) => QueueSlice::BF16(s),
        }
    }
}

/// A read-only queue `[K, C]`: its elements and its K and C.
#[derive(Clone, Copy, Debug)]
pub struct QueueView<'a> {
    pub(super) slice: QueueSlice<'a>,
    pub(super) k: usize,
    pub(super) c: usize,
}

/// What both views have: the constructor from a slice of K*C elements, the length, and [`super::QueueDims`].
macro_rules! view_basics {
    ($view:ident, $slice:ident) => {
        impl<'a> $view<'a> {
            /// `slice` as a queue of `k` keys of `c` features; it must hold `k*c` elements.
            pub fn new(slice: $slice<'a>, k: usize, c: usize) -> Result<Self> {
                checked_kc(k, c, Some(slice.len()))?;
                Ok(Self { slice, k, c })
            }
            /// Number of elements (K*C).
            pub fn len(&self) -> usize {
                self.slice.len()
            }
            #[doc = concat!("True when the queue holds no element (never, for a view made by [`", stringify!($view), "::new`]).")]
            pub fn is_empty(&self) -> bool {
                self.slice.is_empty()
            }
        }
        super::queue_dims!($view<'_>, |q| q.slice.dtype());
    };
}

view_basics!(QueueView, QueueSlice);

impl<'a> QueueView<'a> {
    /// The elements.
    pub fn slice(&self) -> QueueSlice<'a> {
        self.slice
    }
    /// Element `idx` as f32.
    pub fn get(&self, idx: usize) -> f32 {
        self.slice.get(idx)
    }
    /// Elements `[start, start+len)` as f32: borrowed for f32 storage, converted into `scratch` otherwise.
    pub fn range_f32<'s>(&'s self, start: usize, len: usize, scratch: &'s mut Vec<f32>) -> &'s [f32] {
        self.slice.range_f32(start, len, scratch)
    }
}

/// A mutable queue `[K, C]`: its elements and its K and C.
#[derive(Debug)]
pub struct QueueViewMut<'a> {
    pub(super) slice: QueueSliceMut<'a>,
    pub(super) k: usize,
    pub(super) c: usize,
}

view_basics!(QueueViewMut, QueueSliceMut);

impl<'a> QueueViewMut<'a> {
    /// Writes `v` at `idx`, rounding to nearest-even for the 16-bit types.
    pub fn set(&mut self, idx: usize, v: f32) {
        self.slice.set(idx, v)
    }
    /// A read-only view of the same queue.
    pub fn as_view(&self) -> QueueView<'_> {
        QueueView { slice: self.slice.as_slice(), k: self.k, c: self.c }
    }
}

/// Converts a queue of `k` keys of `c` features from the official MoCo layout `[C, K]` (one key per column,
/// `queue[:, j]`) to this crate's `[K, C]` layout (one key per row), which makes enqueue a contiguous write and
/// streams whole keys.
pub fn queue_from_ck(queue_ck: &[f32], k: usize, c: usize) -> crate::error::Result<Vec<f32>> {
    checked_kc(k, c, Some(queue_ck.len()))?;
    Ok(transpose(queue_ck, c, k))
}

/// Converts a queue of `k` keys of `c` features from this crate's `[K, C]` layout (one key per row) back to the
/// official `[C, K]`.
pub fn queue_to_ck(queue_kc: &[f32], k: usize, c: usize) -> crate::error::Result<Vec<f32>> {
    checked_kc(k, c, Some(queue_kc.len()))?;
    Ok(transpose(queue_kc, k, c))
}

/// The transpose `[cols, rows]` of the row-major matrix `m: [rows, cols]`.
fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; rows * cols];
    for r in 0..rows {
        for j in 0..cols {
            out[j * rows + r] = m[r * cols + j];
        }
    }
    out
}
