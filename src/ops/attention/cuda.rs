//! The attention core on CUDA (`kernels/attention.cu`): the launches of `src/ops/attention/wgpu.rs`, asynchronous on
//! the device's stream. The backward's `ds [B, H, T, T]` scratch is the device's, grown on demand.

use super::params::{AttentionParams, BLOCK};
use super::{Attention, AttentionShape, KERNELS};
use crate::device::cuda::{cfg_block, Cuda};
use crate::error::{Error, Result};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DeviceRepr, PushKernelArg};

// SAFETY: #[repr(C)] plain-old-data (five u32, one f32, two u32), the layout of `struct AttentionParams` in
// kernels/attention.cu.
unsafe impl DeviceRepr for AttentionParams {}

/// The backward's `ds` scratch of a [`Cuda`] device (kept in its op state).
#[derive(Default)]
struct DsScratch(Option<CudaSlice<f32>>);

impl Attention for Cuda {
    fn attention_forward(&mut self, mut out: CudaViewMut<'_, f32>, mut att: CudaViewMut<'_, f32>, qkv: CudaView<'_, f32>, shape: &AttentionShape) -> Result<()> {
        shape.check_forward(out.len(), att.len(), qkv.len())?;
        let (p, grid) = AttentionParams::launch(shape);
        let f = KERNELS.cuda_function(self.stream(), "attention_forward")?;
        // SAFETY: attention_forward(AttentionParams, float* out [B*T*C], float* att [B*H*T*T], const float* qkv
        // [B*T*3C]); lengths checked above; block (b, h, i) writes row (b, h, i) of att and out[b, i, h*D..(h+1)*D].
        unsafe { self.stream().launch_builder(&f).arg(&p).arg(&mut out).arg(&mut att).arg(&qkv).launch(cfg_block(grid, BLOCK)) }?;
        Ok(())
    }
    fn attention_backward(&mut self, mut dqkv: CudaViewMut<'_, f32>, dout: CudaView<'_, f32>, qkv: CudaView<'_, f32>, att: CudaView<'_, f32>, shape: &AttentionShape) -> Result<()> {
        shape.check_backward(dqkv.len(), dout.len(), qkv.len(), att.len())?;
        let (p, grid) = AttentionParams::launch(shape);
        let stream = self.stream().clone();
        let len = shape.att_len();
        let scratch = &mut self.op_state::<DsScratch>().0;
        if scratch.as_ref().is_none_or(|s| s.len() < len) {
            *scratch = None; // free the old one first
            *scratch = Some(stream.alloc_zeros::<f32>(len)?);
        }
        let Some(ds) = scratch.as_mut() else { return Err(Error::Unavailable("attention scratch: not allocated".into())) };
        let mut ds = ds.slice_mut(0..len);
        let f = KERNELS.cuda_function(&stream, "attention_backward_dq")?;
        // SAFETY: attention_backward_dq(AttentionParams, float* dqkv [B*T*3C], float* ds [B*H*T*T], const float* dout
        // [B*T*C], const float* qkv [B*T*3C], const float* att [B*H*T*T]); lengths checked above (ds sliced to
        // B*H*T*T); block (b, h, i) writes row (b, h, i) of ds and the q part of dqkv's token (b, i), head h.
        unsafe { stream.launch_builder(&f).arg(&p).arg(&mut dqkv).arg(&mut ds).arg(&dout).arg(&qkv).arg(&att).launch(cfg_block(grid, BLOCK)) }?;
        let f = KERNELS.cuda_function(&stream, "attention_backward_dkv")?;
        // SAFETY: attention_backward_dkv(AttentionParams, float* dqkv, const float* ds, const float* dout, const
        // float* qkv, const float* att), the same lengths; block (b, h, j) writes the k and v parts of dqkv's token
        // (b, j), head h, and reads the ds written by the launch before it on this stream.
        unsafe { stream.launch_builder(&f).arg(&p).arg(&mut dqkv).arg(&ds.as_view()).arg(&dout).arg(&qkv).arg(&att).launch(cfg_block(grid, BLOCK)) }?;
        Ok(())
    }
}
