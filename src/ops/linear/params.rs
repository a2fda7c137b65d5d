//! The parameter block and grids of `kernels/linear.cu` / `shaders/linear.wgsl` (a strided GEMM and the bias
//! gradient), shared by the wgpu and CUDA launchers and the CUDA emulation test.

use super::LinearShape;
use crate::error::{Error, Result};
use crate::ops::launch::{elem_grid, Grid};

/// `struct LinearParams` of the kernels (32 bytes): `C[m, nc] (+)= A.B (+ bias)` with A(r, k) at `r*a_rs + k*a_cs`
/// and B(k, c) at `k*b_rs + c*b_cs`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
#[doc(hidden)]
pub struct LinearParams {
    pub m: u32,
    pub nc: u32,
    pub kk: u32,
    pub flags: u32,
    pub a_rs: u32,
    pub a_cs: u32,
    pub b_rs: u32,
    pub b_cs: u32,
}
const _: () = assert!(std::mem::size_of::<LinearParams>() == 32);

/// `FLAG_ACC` of `gemm`: `C += A.B` (else `C = A.B`).
pub const GEMM_FLAG_ACC: u32 = 1;
/// `FLAG_BIAS` of `gemm`: `+ bias[col]`.
pub const GEMM_FLAG_BIAS: u32 = 2;
/// `gemm` runs (GEMM_TILE, GEMM_TILE) blocks, one output per thread.
pub const GEMM_TILE: usize = 16;

/// One launch of `gemm`: its parameter block, grid and block.
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub struct GemmLaunch {
    pub params: LinearParams,
    pub grid: Grid,
    pub block: Grid,
}

impl GemmLaunch {
    /// A strided GEMM `C[m, nc] (+)= A[m, kk].B[kk, nc]`, or an error when its grid would exceed 65535 tiles on an axis.
    pub fn new((m, nc, kk): (usize, usize, usize), (a_rs, a_cs): (usize, usize), (b_rs, b_cs): (usize, usize), bias: bool, acc: bool) -> Result<Self> {
        let (gx, gy) = (nc.div_ceil(GEMM_TILE), m.div_ceil(GEMM_TILE));
        if gx > 65535 || gy > 65535 {
            return Err(Error::shape("linear", "at most 65535*16 rows and output columns per GEMM", format!("{m} x {nc}")));
        }
        let flags = if acc { GEMM_FLAG_ACC } else { 0 } | if bias { GEMM_FLAG_BIAS } else { 0 };
        let u = |v: usize| v as u32;
        let params = LinearParams { m: u(m), nc: u(nc), kk: u(kk), flags, a_rs: u(a_rs), a_cs: u(a_cs), b_rs: u(b_rs), b_cs: u(b_cs) };
        Ok(Self { params, grid: (gx as u32, gy as u32, 1), block: (GEMM_TILE as u32, GEMM_TILE as u32, 1) })
    }
    /// The grid and block of the tensor-core kernels (`gemm_mma_tf32`, `gemm_mma_tf32x3`, `gemm_mma_bf16`): 64 x 64 output tiles of
    /// 256 threads (within the 16 x 16 grid's limits that [`GemmLaunch::new`] checked).
    pub fn mma_grid(&self) -> (Grid, Grid) {
        let (m, nc) = (self.params.m as usize, self.params.nc as usize);
        ((nc.div_ceil(64) as u32, m.div_ceil(64) as u32, 1), (256, 1, 1))
    }
    /// Linear forward `out [N, OUT] = inp [N, IN] . weight [OUT, IN]^T (+ bias)`: A = inp, B(i, o) = weight[o*IN + i].
    pub fn linear_forward(s: &LinearShape, bias: bool) -> Result<Self> {
        Self::new((s.n, s.out_f, s.in_f), (s.in_f, 1), (1, s.in_f), bias, false)
    }
    /// Linear backward data `dinp [N, IN] += dout [N, OUT] . weight [OUT, IN]`.
    pub fn linear_backward_data(s: &LinearShape) -> Result<Self> {
        Self::new((s.n, s.in_f, s.out_f), (s.out_f, 1), (s.in_f, 1), false, true)
    }
    /// Linear backward weight `dweight [OUT, IN] += dout^T . inp`: A(o, r) = dout[r*OUT + o].
    pub fn linear_backward_weight(s: &LinearShape) -> Result<Self> {
        Self::new((s.out_f, s.in_f, s.n), (1, s.out_f), (s.in_f, 1), false, true)
    }
}

/// `bias_backward` of a linear layer: its parameter block and grid (one thread per output column).
pub fn bias_backward(s: &LinearShape) -> (LinearParams, Grid) {
    (LinearParams { m: s.n as u32, nc: s.out_f as u32, ..Default::default() }, elem_grid(s.out_f))
}
