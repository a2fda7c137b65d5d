//! Layer norm on CUDA (`kernels/layernorm.cu`): the launches of `src/ops/layernorm/wgpu.rs`, asynchronous on the
//! device's stream.

use super::params::{col_grid, row_grid, LayerNormParams, COL_BLOCK, ROW_BLOCK};
use super::{LayerNorm, LayerNormShape, KERNELS};
use crate::device::cuda::{cfg_block, Cuda};
use crate::error::Result;
use cudarc::driver::{CudaView, CudaViewMut, DeviceRepr, PushKernelArg};

// SAFETY: #[repr(C)] plain-old-data (two u32, one f32, one u32), the layout of `struct LayerNormParams` in
// kernels/layernorm.cu.
unsafe impl DeviceRepr for LayerNormParams {}

impl LayerNorm for Cuda {
    fn layernorm_forward(&mut self, mut out: CudaViewMut<'_, f32>, mut mean: CudaViewMut<'_, f32>, mut rstd: CudaViewMut<'_, f32>, inp: CudaView<'_, f32>, gamma: CudaView<'_, f32>, beta: CudaView<'_, f32>, shape: &LayerNormShape) -> Result<()> {
        shape.check_forward(out.len(), mean.len(), rstd.len(), inp.len(), gamma.len(), beta.len())?;
        let p = LayerNormParams::new(shape);
        let f = KERNELS.cuda_function(self.stream(), "layernorm_forward")?;
        // SAFETY: layernorm_forward(LayerNormParams, float* out [R*C], float* mean [R], float* rstd [R], const float*
        // inp [R*C], const float* gamma [C], const float* beta [C]); lengths checked above; block row < R touches
        // row `row` of inp/out and index row of mean/rstd, columns c < C.
        unsafe { self.stream().launch_builder(&f).arg(&p).arg(&mut out).arg(&mut mean).arg(&mut rstd).arg(&inp).arg(&gamma).arg(&beta).launch(cfg_block(row_grid(shape), ROW_BLOCK)) }?;
        Ok(())
    }
    fn layernorm_backward(&mut self, mut dinp: CudaViewMut<'_, f32>, mut dgamma: CudaViewMut<'_, f32>, mut dbeta: CudaViewMut<'_, f32>, dout: CudaView<'_, f32>, inp: CudaView<'_, f32>, gamma: CudaView<'_, f32>, mean: CudaView<'_, f32>, rstd: CudaView<'_, f32>, shape: &LayerNormShape) -> Result<()> {
        shape.check_backward(dinp.len(), dgamma.len(), dbeta.len(), dout.len(), inp.len(), gamma.len(), mean.len(), rstd.len())?;
        let p = LayerNormParams::new(shape);
        let stream = self.stream();
        let f = KERNELS.cuda_function(stream, "layernorm_backward_dx")?;
        // SAFETY: layernorm_backward_dx(LayerNormParams, float* dinp [R*C], const float* dout [R*C], const float* inp
        // [R*C], const float* gamma [C], const float* mean [R], const float* rstd [R]); lengths checked above; block
        // row < R touches row `row` only.
        unsafe { stream.launch_builder(&f).arg(&p).arg(&mut dinp).arg(&dout).arg(&inp).arg(&gamma).arg(&mean).arg(&rstd).launch(cfg_block(row_grid(shape), ROW_BLOCK)) }?;
        let f = KERNELS.cuda_function(stream, "layernorm_backward_params")?;
        // SAFETY: layernorm_backward_params(LayerNormParams, float* dgamma [C], float* dbeta [C], const float* dout
        // [R*C], const float* inp [R*C], const float* mean [R], const float* rstd [R]); thread c < C reads column c
        // of every row and updates index c.
        unsafe { stream.launch_builder(&f).arg(&p).arg(&mut dgamma).arg(&mut dbeta).arg(&dout).arg(&inp).arg(&mean).arg(&rstd).launch(cfg_block(col_grid(shape), COL_BLOCK)) }?;
        Ok(())
    }
}
