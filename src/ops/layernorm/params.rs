//! The parameter block and grids of `kernels/layernorm.cu` / `shaders/layernorm.wgsl`.

use super::LayerNormShape;
use crate::ops::launch::{grid_2d, Grid};

/// Threads per group of the row kernels (`layernorm_forward`, `layernorm_backward_dx`).
pub const ROW_BLOCK: u32 = 128;
/// Threads per group of the column kernel (`layernorm_backward_params`).
pub const COL_BLOCK: u32 = 64;

/// `struct LayerNormParams` of the kernels (16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[doc(hidden)]
pub struct LayerNormParams {
    pub rows: u32,
    pub c: u32,
    pub eps: f32,
    pub _pad: u32,
}

impl LayerNormParams {
    /// The parameter block of `s` (the shape's constructor bounds every tensor by `i32::MAX` elements).
    pub fn new(s: &LayerNormShape) -> Self {
        Self { rows: s.rows() as u32, c: s.c() as u32, eps: s.eps(), _pad: 0 }
    }
}

/// `layernorm_forward`, `layernorm_backward_dx`: one [`ROW_BLOCK`]-thread group per row.
pub fn row_grid(s: &LayerNormShape) -> Grid {
    grid_2d(s.rows())
}

/// `layernorm_backward_params`: one thread per column, [`COL_BLOCK`] per group.
pub fn col_grid(s: &LayerNormShape) -> Grid {
    grid_2d(s.c().div_ceil(COL_BLOCK as usize))
}
