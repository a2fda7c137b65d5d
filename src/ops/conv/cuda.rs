//! 2-D convolution on CUDA (`kernels/conv.cu`): the launches of `src/ops/conv/wgpu.rs` (64x64 block tiles, 16-deep K
//! chunks, 256 threads; im2col gathered on the fly; the weight gradient split over K into partial tiles, in the
//! device's reused scratch, and reduced in order), asynchronous on the device's stream. The kernels are the f32
//! CUDA-core ones (4x4 register micro-tiles) or, at the device's [`MatmulPrecision`] `Tf32x3` / `Tf32` / `Bf16` on
//! sm_80 and newer, the tensor-core ones of the same tiles, grid and arguments (`_mma_tf32x3`, `_mma_tf32`,
//! `_mma_bf16`).

use super::params::{conv_revalidate, ConvParams};
use super::{Conv, Conv2dShape, KERNELS};
use crate::ops::precision::MatmulPrecision;
use crate::device::cuda::{cfg, Cuda};
use crate::error::Result;
use cudarc::driver::{CudaView, CudaViewMut, DeviceRepr, PushKernelArg};

// SAFETY: #[repr(C)] plain-old-data of sixteen u32 fields (size and offsets asserted in params.rs), the layout of
// `struct ConvParams` in kernels/conv.cu.
unsafe impl DeviceRepr for ConvParams {}

/// The kernel of `[fp32, tf32x3, tf32, bf16]` at the device's arithmetic (`Cuda::matmul_arithmetic`).
fn kernel(dev: &Cuda, [fp32, tf32x3, tf32, bf16]: [&'static str; 4]) -> Result<&'static str> {
    Ok(match dev.matmul_arithmetic()? {
        MatmulPrecision::Fp32 => fp32,
        MatmulPrecision::Tf32x3 => tf32x3,
        MatmulPrecision::Tf32 => tf32,
        MatmulPrecision::Bf16 => bf16,
    })
}

impl Conv for Cuda {
    fn conv2d_forward(&mut self, mut out: CudaViewMut<'_, f32>, inp: CudaView<'_, f32>, weight: CudaView<'_, f32>, shape: &Conv2dShape) -> Result<()> {
        shape.check_forward(out.len(), inp.len(), weight.len())?;
        let s = conv_revalidate(shape)?;
        let p = ConvParams::forward(&s);
        let g = p.grid("conv2d_forward")?;
        let f = KERNELS.cuda_function(self.stream(), kernel(self, ["conv2d_forward", "conv2d_forward_mma_tf32x3", "conv2d_forward_mma_tf32", "conv2d_forward_mma_bf16"])?)?;
        // SAFETY: conv2d_forward(ConvParams, const float* inp [N*C_in*H*W], const float* weight [C_out*C_in*KH*KW],
        // float* result [N*C_out*OH*OW]); lengths checked above; reads are guarded by the GEMM bounds and the image
        // bounds (col_value), writes by m < C_out and j < N*OH*OW.
        unsafe { self.stream().launch_builder(&f).arg(&p).arg(&inp).arg(&weight).arg(&mut out).launch(cfg(g)) }?;
        Ok(())
    }
    fn conv2d_backward(&mut self, dinp: Option<CudaViewMut<'_, f32>>, mut dweight: CudaViewMut<'_, f32>, dout: CudaView<'_, f32>, inp: CudaView<'_, f32>, weight: CudaView<'_, f32>, shape: &Conv2dShape) -> Result<()> {
        shape.check_backward(dinp.as_ref().map(|d| d.len()), dweight.len(), dout.len(), inp.len(), weight.len())?;
        let s = conv_revalidate(shape)?;
        let (wp, phases) = (ConvParams::backward_weight(&s), ConvParams::backward_data(&s));
        let wg = wp.backward_weight_grid("conv2d_backward")?;
        let data_grids = phases.iter().map(|dp| dp.grid("conv2d_backward")).collect::<Result<Vec<_>>>()?;
        let (weight_kernel, data_kernel) = (
            kernel(self, ["conv2d_backward_weight", "conv2d_backward_weight_mma_tf32x3", "conv2d_backward_weight_mma_tf32", "conv2d_backward_weight_mma_bf16"])?,
            kernel(self, ["conv2d_backward_data", "conv2d_backward_data_mma_tf32x3", "conv2d_backward_data_mma_tf32", "conv2d_backward_data_mma_bf16"])?,
        );
        let (stream, ws) = self.workspace();
        let stream = &stream;
        let [mut partial] = ws.f32s.take(stream, [wp.partial_len()])?;
        let f = KERNELS.cuda_function(stream, weight_kernel)?;
        // SAFETY: conv2d_backward_weight(ConvParams, const float* inp [N*C_in*H*W], const float* dout [N*C_out*OH*OW],
        // float* partial [k_splits*C_out*C_in*KH*KW]); lengths checked above; block (x, y, z) writes the elements
        // m < C_out, j < C_in*KH*KW of its tile in partial tile z < k_splits (grid z), each by one thread.
        unsafe { stream.launch_builder(&f).arg(&wp).arg(&inp).arg(&dout).arg(&mut partial).launch(cfg(wg)) }?;
        let partial = partial.into_view();
        let f = KERNELS.cuda_function(stream, "conv2d_backward_weight_reduce")?;
        // SAFETY: conv2d_backward_weight_reduce(ConvParams, const float* partial [k_splits*C_out*C_in*KH*KW], float*
        // result [C_out*C_in*KH*KW]); thread e < C_out*C_in*KH*KW reads partial[s * len + e], s < k_splits, and
        // updates result[e]; every partial element was written by the launch before (each tile of each range).
        unsafe { stream.launch_builder(&f).arg(&wp).arg(&partial).arg(&mut dweight).launch(cfg(wp.backward_weight_reduce_grid())) }?;
        if let Some(mut d) = dinp {
            let f = KERNELS.cuda_function(stream, data_kernel)?;
            for (dp, dg) in phases.iter().zip(data_grids) {
                // SAFETY: conv2d_backward_data(ConvParams, const float* weight [C_out*C_in*KH*KW], const float* dout
                // [N*C_out*OH*OW], float* result [N*C_in*H*W]); lengths checked above; dout reads are guarded by
                // dout_at (oy < OH, ox < OW), weight reads by the phase's taps (< KH, KW); each dinp element of the
                // phase (m < C_in, j < N*ph_h*ph_w: pixel (ph_y + stride*a, ph_x + stride*b) < (H, W)) is owned by
                // one thread, and the phases' pixels are disjoint.
                unsafe { stream.launch_builder(&f).arg(dp).arg(&weight).arg(&dout).arg(&mut d).launch(cfg(dg)) }?;
            }
        }
        Ok(())
    }
}
