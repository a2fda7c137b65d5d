//! Grid helpers shared by the GPU launchers of every family (wgpu and CUDA run the same grids, and the CUDA
//! emulation test builds its launches with them).

pub use crate::device::Grid;

/// Threads per block of the CUDA launches (and workgroup size of the WGSL kernels) unless a family says otherwise
/// (`WG` in the kernels).
pub const BLOCK: u32 = 256;

/// The 2-D grid of `blocks` blocks (x <= 65535; the kernels flatten `blockIdx.x + blockIdx.y * gridDim.x`).
pub fn grid_2d(blocks: usize) -> Grid {
    if blocks <= 65535 {
        (blocks.max(1) as u32, 1, 1)
    } else {
        (65535, blocks.div_ceil(65535) as u32, 1)
    }
}

/// One [`BLOCK`]-thread block per [`BLOCK`] elements of `len`.
pub fn elem_grid(len: usize) -> Grid {
    grid_2d(len.div_ceil(BLOCK as usize))
}
