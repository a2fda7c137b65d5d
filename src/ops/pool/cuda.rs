//! Pooling on CUDA (`kernels/pool.cu`): the launches of `src/ops/pool/wgpu.rs`, asynchronous on the device's stream.

use super::params::{avgpool_backward_grid, avgpool_forward_grid, maxpool_backward_grid, maxpool_forward_grid, PoolParams};
use super::{GlobalAvgPoolShape, MaxPool2dShape, Pool, KERNELS};
use crate::device::cuda::{cfg, Cuda};
use crate::error::Result;
use cudarc::driver::{CudaView, CudaViewMut, DeviceRepr, PushKernelArg};

// SAFETY: #[repr(C)] plain-old-data (nine u32, one f32, two u32), the layout of `struct PoolParams` in
// kernels/pool.cu.
unsafe impl DeviceRepr for PoolParams {}

impl Pool for Cuda {
    fn maxpool2d_forward(&mut self, mut out: CudaViewMut<'_, f32>, mut argmax: CudaViewMut<'_, u32>, inp: CudaView<'_, f32>, shape: &MaxPool2dShape) -> Result<()> {
        let p = PoolParams::maxpool(shape)?;
        shape.check(("inp", inp.len()), ("out", out.len()), argmax.len())?;
        let f = KERNELS.cuda_function(self.stream(), "maxpool_forward")?;
        // SAFETY: maxpool_forward(PoolParams, const float* x [N*C*H*W], float* yout [N*C*OH*OW], unsigned* argmax
        // [N*C*OH*OW]); lengths checked above; thread o < N*C*OH*OW reads its window (inside its plane, pad <= k/2)
        // and writes index o.
        unsafe { self.stream().launch_builder(&f).arg(&p).arg(&inp).arg(&mut out).arg(&mut argmax).launch(cfg(maxpool_forward_grid(shape))) }?;
        Ok(())
    }
    fn maxpool2d_backward(&mut self, mut dinp: CudaViewMut<'_, f32>, dout: CudaView<'_, f32>, argmax: CudaView<'_, u32>, shape: &MaxPool2dShape) -> Result<()> {
        let p = PoolParams::maxpool(shape)?;
        shape.check(("dinp", dinp.len()), ("dout", dout.len()), argmax.len())?;
        let f = KERNELS.cuda_function(self.stream(), "maxpool_backward")?;
        // SAFETY: maxpool_backward(PoolParams, const unsigned* argmax_in [N*C*OH*OW], const float* dy [N*C*OH*OW],
        // float* dx [N*C*H*W]); thread i < N*C*H*W reads the outputs (oy < OH, ox < OW) of its plane and updates
        // index i.
        unsafe { self.stream().launch_builder(&f).arg(&p).arg(&argmax).arg(&dout).arg(&mut dinp).launch(cfg(maxpool_backward_grid(shape))) }?;
        Ok(())
    }
    fn global_avgpool_forward(&mut self, mut out: CudaViewMut<'_, f32>, inp: CudaView<'_, f32>, shape: &GlobalAvgPoolShape) -> Result<()> {
        let p = PoolParams::avgpool(shape)?;
        shape.check(("inp", inp.len()), ("out", out.len()))?;
        let f = KERNELS.cuda_function(self.stream(), "avgpool_forward")?;
        // SAFETY: avgpool_forward(PoolParams, const float* x [N*C*HW], float* yout [N*C]); thread p < N*C reads its
        // plane and writes index p.
        unsafe { self.stream().launch_builder(&f).arg(&p).arg(&inp).arg(&mut out).launch(cfg(avgpool_forward_grid(shape))) }?;
        Ok(())
    }
    fn global_avgpool_backward(&mut self, mut dinp: CudaViewMut<'_, f32>, dout: CudaView<'_, f32>, shape: &GlobalAvgPoolShape) -> Result<()> {
        let p = PoolParams::avgpool(shape)?;
        shape.check(("dinp", dinp.len()), ("dout", dout.len()))?;
        let f = KERNELS.cuda_function(self.stream(), "avgpool_backward")?;
        // SAFETY: avgpool_backward(PoolParams, const float* dy [N*C], float* dx [N*C*HW]); thread i < N*C*HW reads
        // dy[i / HW] and updates index i.
        unsafe { self.stream().launch_builder(&f).arg(&p).arg(&dout).arg(&mut dinp).launch(cfg(avgpool_backward_grid(shape))) }?;
        Ok(())
    }
}
