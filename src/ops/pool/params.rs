//! The parameter block and grids of `kernels/pool.cu` / `shaders/pool.wgsl`, shared by the wgpu and CUDA launchers
//! and the CUDA emulation test.

use super::{GlobalAvgPoolShape, MaxPool2dShape};
use crate::error::Result;
use crate::ops::launch::{elem_grid, Grid};

/// `struct PoolParams` of the kernels (48 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
#[doc(hidden)]
pub struct PoolParams {
    pub planes: u32,
    pub h: u32,
    pub w: u32,
    pub oh: u32,
    pub ow: u32,
    pub k: u32,
    pub stride: u32,
    pub pad: u32,
    pub hw: u32,
    pub inv_hw: f32,
    pub _pad: [u32; 2],
}
const _: () = assert!(std::mem::size_of::<PoolParams>() == 48 && std::mem::offset_of!(PoolParams, inv_hw) == 36);

impl PoolParams {
    /// `maxpool_forward` / `maxpool_backward` (re-validates the shape: its fields are public).
    pub fn maxpool(s: &MaxPool2dShape) -> Result<Self> {
        let s = MaxPool2dShape::new(s.n, s.c, s.h, s.w, s.k, s.stride, s.pad)?;
        let u = |v: usize| v as u32;
        Ok(Self { planes: u(s.n * s.c), h: u(s.h), w: u(s.w), oh: u(s.out_h()), ow: u(s.out_w()), k: u(s.k), stride: u(s.stride), pad: u(s.pad), ..Default::default() })
    }
    /// `avgpool_forward` / `avgpool_backward` (re-validates the shape).
    pub fn avgpool(s: &GlobalAvgPoolShape) -> Result<Self> {
        let s = GlobalAvgPoolShape::new(s.n, s.c, s.hw)?;
        Ok(Self { planes: (s.n * s.c) as u32, hw: s.hw as u32, inv_hw: 1.0 / s.hw as f32, ..Default::default() })
    }
}

/// `maxpool_forward`: one thread per output element.
pub fn maxpool_forward_grid(s: &MaxPool2dShape) -> Grid {
    elem_grid(s.out_len())
}

/// `maxpool_backward`: one thread per input element.
pub fn maxpool_backward_grid(s: &MaxPool2dShape) -> Grid {
    elem_grid(s.inp_len())
}

/// `avgpool_forward`: one thread per plane.
pub fn avgpool_forward_grid(s: &GlobalAvgPoolShape) -> Grid {
    elem_grid(s.n * s.c)
}

/// `avgpool_backward`: one thread per input element.
pub fn avgpool_backward_grid(s: &GlobalAvgPoolShape) -> Grid {
    elem_grid(s.n * s.c * s.hw)
}
