//! The parameter block and grid of `kernels/eltwise.cu` / `shaders/eltwise.wgsl`: one 256-thread group per 256
//! elements.

use super::EltwiseShape;
use crate::error::Result;
use crate::ops::launch::{elem_grid, Grid};

/// `struct EltwiseParams` of the kernels (16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
#[doc(hidden)]
pub struct EltwiseParams {
    pub len: u32,
    pub _pad: [u32; 3],
}

impl EltwiseParams {
    /// The parameter block and grid of any element-wise kernel over `s` (re-validated: its field is public).
    pub fn launch(s: &EltwiseShape) -> Result<(Self, Grid)> {
        let s = EltwiseShape::new(s.len)?;
        Ok((Self { len: s.len as u32, _pad: [0; 3] }, elem_grid(s.len)))
    }
}
