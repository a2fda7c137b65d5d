//! The parameter block, flags and grids of `kernels/batchnorm.cu` / `shaders/batchnorm.wgsl`, shared by the wgpu and
//! CUDA launchers and the CUDA emulation test.

use super::BatchNormShape;
use crate::error::{Error, Result};
use crate::ops::launch::{grid_2d, Grid, BLOCK};

/// `struct BatchNormParams` of the kernels (48 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
#[doc(hidden)]
pub struct BatchNormParams {
    pub n: u32,
    pub c: u32,
    pub hw: u32,
    pub groups: u32,
    pub count: u32,
    pub len: u32,
    pub flags: u32,
    pub _pad: u32,
    pub eps: f32,
    pub momentum: f32,
    pub _pad2: [f32; 2],
}
const _: () = assert!(std::mem::size_of::<BatchNormParams>() == 48 && std::mem::offset_of!(BatchNormParams, eps) == 32);

/// `FLAG_*` bits of the kernels (`BatchNormParams.flags`).
pub mod flags {
    /// gamma given (else 1)
    pub const GAMMA: u32 = 1;
    /// beta given (else 0)
    pub const BETA: u32 = 2;
    /// ReLU epilogue (backward: dy masked by out > 0)
    pub const RELU: u32 = 4;
    /// + identity before the ReLU (backward: didentity += dy)
    pub const ADD: u32 = 8;
    /// apply: the mean/rstd bindings hold running_mean/running_var
    pub const EVAL: u32 = 16;
    /// dgamma given
    pub const DGAMMA: u32 = 32;
    /// dbeta given
    pub const DBETA: u32 = 64;
}

impl BatchNormParams {
    /// The parameter block of every batch-norm kernel for `s` with `flags` ([`flags`]).
    pub fn new(s: &BatchNormShape, flags: u32) -> Self {
        Self { n: s.n as u32, c: s.c as u32, hw: s.hw as u32, groups: s.groups as u32, count: s.count() as u32, len: s.len() as u32, flags, _pad: 0, eps: s.eps, momentum: s.momentum, _pad2: [0.0; 2] }
    }
}

/// `bn_stats` and `bn_backward_sums`: one block per (group, channel) statistic, or an error when there are too many.
pub fn stat_grid(s: &BatchNormShape) -> Result<Grid> {
    let gcn = s.stats_len();
    // the grid limit, and the kernels' u32 indexing of the [G*C, 3] coefficients
    if gcn > 65535 * 65535 || gcn > u32::MAX as usize / 3 {
        return Err(Error::shape("batchnorm", "G*C <= (2^32 - 1)/3", format!("G*C = {gcn}")));
    }
    Ok(grid_2d(gcn))
}

/// `bn_running` and `bn_backward_coef`: one thread per channel.
pub fn channel_grid(s: &BatchNormShape) -> Grid {
    (s.c.div_ceil(BLOCK as usize) as u32, 1, 1)
}
