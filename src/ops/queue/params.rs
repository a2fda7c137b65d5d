//! The parameter block and grid of the enqueue kernels (`kernels/queue.cu`, `shaders/queue.wgsl`).

use super::QueueShape;
use crate::ops::launch::{Grid, BLOCK};

/// `struct QueueParams` of the kernels (32 bytes).
#[doc(hidden)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct QueueParams {
    pub n: u32,
    pub c: u32,
    pub k: u32,
    pub ptr: u32,
    pub dtype: u32,
    pub words_a: u32,
    pub total: u32,
    pub _pad: u32,
}

impl QueueParams {
    /// The enqueue of `shape` into a queue of dtype code `dtype` (0 f32, 1 f16, 2 bf16). `total` is the number of
    /// threads with work: elements for f32; for 16-bit storage, the u32 words of the two segments
    /// `[ptr*C, min(ptr+N, K)*C)` (first `words_a` threads) and `[0, max(ptr+N-K, 0)*C)`.
    pub fn new(shape: &QueueShape, dtype: u32) -> Self {
        let (n, c, k, ptr) = (shape.n() as u32, shape.c() as u32, shape.k() as u32, shape.ptr() as u32);
        let end_a = (ptr + n).min(k);
        let words_a = ((end_a * c - 1) / 2) - (ptr * c) / 2 + 1;
        let words_b = ((ptr + n).saturating_sub(k) * c).div_ceil(2);
        let total = if dtype == 0 { n * c } else { words_a + words_b };
        Self { n, c, k, ptr, dtype, words_a, total, _pad: 0 }
    }
    /// The CUDA grid of `enqueue_f32` / `enqueue_packed16`: one thread per element (f32) or element pair (16-bit).
    pub fn grid(&self) -> Grid {
        (self.total.div_ceil(BLOCK).max(1), 1, 1)
    }
    /// A grid that covers [`QueueParams::grid`] at every pointer (a captured enqueue replays at the next ones): N*C
    /// elements (f32), or the words of two segments of N*C elements in all, at most N*C/2 + 2 (16-bit).
    pub fn grid_for_any_ptr(&self) -> Grid {
        let threads = if self.dtype == 0 { self.n * self.c } else { (self.n * self.c) / 2 + 2 };
        (threads.div_ceil(BLOCK).max(1), 1, 1)
    }
}
