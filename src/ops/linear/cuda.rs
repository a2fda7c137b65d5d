//! The linear layer on CUDA (`kernels/linear.cu`): the launches of `src/ops/linear/wgpu.rs`, asynchronous on the
//! device's stream; the GEMMs at the device's [`MatmulPrecision`] (`Tf32x3`, `Tf32` and `Bf16` on the tensor cores,
//! sm_80+).

use super::params::{bias_backward, GemmLaunch, LinearParams, GEMM_FLAG_BIAS};
use super::{Linear, LinearShape, KERNELS};
use crate::device::cuda::{cfg, push_opt, Cuda};
use crate::error::Result;
use crate::ops::precision::MatmulPrecision;
use cudarc::driver::{CudaView, CudaViewMut, DeviceRepr, LaunchConfig, PushKernelArg};

// SAFETY: #[repr(C)] plain-old-data (eight u32), the layout of `struct LinearParams` in kernels/linear.cu.
unsafe impl DeviceRepr for LinearParams {}

/// One strided GEMM `C[m, nc] (+)= A.B (+ bias)` as planned by `g`, at the device's [`MatmulPrecision`]: (16, 16)
/// blocks of one output each (f32), or 64 x 64 tiles on the tensor cores (sm_80+).
fn gemm(dev: &Cuda, g: GemmLaunch, c: &mut CudaViewMut<f32>, a: &CudaView<f32>, b: &CudaView<f32>, bias: Option<&CudaView<f32>>) -> Result<()> {
    debug_assert_eq!(bias.is_some(), g.params.flags & GEMM_FLAG_BIAS != 0);
    let stream = dev.stream();
    let (name, (grid, block)) = match dev.matmul_arithmetic()? {
        MatmulPrecision::Tf32x3 => ("gemm_mma_tf32x3", g.mma_grid()),
        MatmulPrecision::Tf32 => ("gemm_mma_tf32", g.mma_grid()),
        MatmulPrecision::Bf16 => ("gemm_mma_bf16", g.mma_grid()),
        MatmulPrecision::Fp32 => ("gemm", (g.grid, g.block)),
    };
    let f = KERNELS.cuda_function(stream, name)?;
    let mut l = stream.launch_builder(&f);
    l.arg(&g.params).arg(a).arg(b).arg(c);
    push_opt(&mut l, bias);
    // SAFETY: gemm and gemm_mma_*(LinearParams, const float* ga, const float* gb, float* gc [m*nc], const float*
    // bias [nc]); the callers checked that A and B hold every strided element (r < m, k < kk, c < nc) the kernel
    // reads (reads and copies are guarded by those bounds) and C m*nc elements; bias is null exactly when FLAG_BIAS is
    // clear and read only under it; each C[row*nc + col], row < m, col < nc, is written by one thread only; 256
    // threads per block as the launch bounds.
    unsafe { l.launch(LaunchConfig { grid_dim: grid, block_dim: block, shared_mem_bytes: 0 }) }?;
    Ok(())
}

impl Linear for Cuda {
    fn linear_forward(&mut self, mut out: CudaViewMut<'_, f32>, inp: CudaView<'_, f32>, weight: CudaView<'_, f32>, bias: Option<CudaView<'_, f32>>, shape: &LinearShape) -> Result<()> {
        let s = shape.revalidate()?;
        s.check_forward(out.len(), inp.len(), weight.len(), bias.as_ref().map(|b| b.len()))?;
        gemm(self, GemmLaunch::linear_forward(&s, bias.is_some())?, &mut out, &inp, &weight, bias.as_ref())
    }
    fn linear_backward(&mut self, dinp: Option<CudaViewMut<'_, f32>>, mut dweight: CudaViewMut<'_, f32>, dbias: Option<CudaViewMut<'_, f32>>, dout: CudaView<'_, f32>, inp: CudaView<'_, f32>, weight: CudaView<'_, f32>, shape: &LinearShape) -> Result<()> {
        let s = shape.revalidate()?;
        s.check_backward(dinp.as_ref().map(|d| d.len()), dweight.len(), dbias.as_ref().map(|d| d.len()), dout.len(), inp.len(), weight.len())?;
        let (data, wgrad) = (GemmLaunch::linear_backward_data(&s)?, GemmLaunch::linear_backward_weight(&s)?);
        if let Some(mut dx) = dinp {
            // dinp [N, IN] += dout [N, OUT] . weight [OUT, IN]
            gemm(self, data, &mut dx, &dout, &weight, None)?;
        }
        // dweight [OUT, IN] += dout^T . inp
        gemm(self, wgrad, &mut dweight, &dout, &inp, None)?;
        let stream = self.stream();
        if let Some(mut db) = dbias {
            let (p, grid) = bias_backward(&s);
            let f = KERNELS.cuda_function(stream, "bias_backward")?;
            // SAFETY: bias_backward(LinearParams, const float* dy [N*OUT], float* dx [OUT]); lengths checked above;
            // thread col < OUT reads column col of dout and updates dbias[col].
            unsafe { stream.launch_builder(&f).arg(&p).arg(&dout).arg(&mut db).launch(cfg(grid)) }?;
        }
        Ok(())
    }
}
