//! The parameter block and grid of `normalize_rows` (`kernels/normalize.cu`, `shaders/normalize.wgsl`).

use super::NormalizeShape;
use crate::ops::launch::{grid_2d, Grid};

/// `struct NormalizeParams` of the kernels (16 bytes).
#[doc(hidden)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct NormalizeParams {
    pub rows: u32,
    pub c: u32,
    pub _pad: [u32; 2],
}

impl NormalizeParams {
    /// The parameter block and grid (one 256-thread group per row, rows over x and y) of `shape`.
    pub fn launch(shape: &NormalizeShape) -> (Self, Grid) {
        (Self { rows: shape.rows() as u32, c: shape.c() as u32, _pad: [0; 2] }, grid_2d(shape.rows()))
    }
}
