//! The parameter block and grids of `kernels/ema.cu` / `shaders/ema.wgsl`, shared by the wgpu and CUDA launchers
//! and the CUDA emulation test.

use super::EmaShape;
use crate::ops::launch::{Grid, BLOCK};

/// `struct EmaParams` of `kernels/ema.cu` / `shaders/ema.wgsl` (16 bytes).
#[doc(hidden)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct EmaParams {
    pub len: u32,
    pub stride: u32,
    /// m, rounded from f64
    pub momentum: f32,
    /// 1 - m taken in f64, then rounded (as PyTorch's `1. - m` with a Python float m)
    pub one_minus_m: f32,
}

/// Blocks of the grid-stride `ema_update` launch at most.
pub const EMA_BLOCKS: u32 = 1024;

/// Elements one block of `ema_multi_tensor` updates (`EMA_CHUNK` in `kernels/ema.cu`).
pub const EMA_CHUNK: usize = 8192;

impl EmaParams {
    /// The grid-stride `ema_update` over `len` elements: its parameter block and grid (`min(ceil(len/256), 1024)`
    /// blocks).
    pub fn launch(shape: &EmaShape) -> (Self, Grid) {
        let len = shape.len();
        let (momentum, one_minus_m) = shape.weights();
        let blocks = (len as u32).div_ceil(BLOCK).clamp(1, EMA_BLOCKS);
        (Self { len: len as u32, stride: blocks * BLOCK, momentum, one_minus_m }, (blocks, 1, 1))
    }
}

/// The chunk map of `ema_multi_tensor` for tensors of `lens` elements: one word per block,
/// `tensor | chunk << 32`, tensor by tensor (the grid is its length).
pub fn ema_multi_chunk_map(lens: &[usize]) -> Vec<u64> {
    let mut map = Vec::new();
    for (t, &len) in lens.iter().enumerate() {
        for ch in 0..len.div_ceil(EMA_CHUNK) {
            map.push(t as u64 | ((ch as u64) << 32));
        }
    }
    map
}
