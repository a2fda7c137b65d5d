//! The attention core on wgpu (`shaders/attention.wgsl`): one 64-thread workgroup per (b, h, query) for the
//! forward and `dq`, per (b, h, key) for `dk`/`dv`. The backward's `ds [B, H, T, T]` scratch is the device's, grown
//! on demand.

use super::params::AttentionParams;
use super::{Attention, AttentionShape, KERNELS};
use crate::device::wgpu::{GpuSlice, Launch, Wgpu};
use crate::error::Result;


impl Attention for Wgpu {
    fn attention_forward(&mut self, out: GpuSlice<'_>, att: GpuSlice<'_>, qkv: GpuSlice<'_>, shape: &AttentionShape) -> Result<()> {
        shape.check_forward(out.len(), att.len(), qkv.len())?;
        let (p, grid) = AttentionParams::launch(shape);
        self.run(&KERNELS, vec![Launch::new("attention_forward", &p, vec![(1, out), (2, att), (3, qkv)], grid)])
    }
    fn attention_backward(&mut self, dqkv: GpuSlice<'_>, dout: GpuSlice<'_>, qkv: GpuSlice<'_>, att: GpuSlice<'_>, shape: &AttentionShape) -> Result<()> {
        shape.check_backward(dqkv.len(), dout.len(), qkv.len(), att.len())?;
        let (p, grid) = AttentionParams::launch(shape);
        let bytes = (shape.att_len() * 4) as u64;
        let ds = self.scratch("moco attention ds", bytes);
        let ds = GpuSlice::elems(&ds, 0, shape.att_len())?;
        let bufs = vec![(4, dqkv), (5, ds), (6, dout), (3, qkv), (2, att)];
        self.run(&KERNELS, vec![Launch::new("attention_backward_dq", &p, bufs.clone(), grid), Launch::new("attention_backward_dkv", &p, bufs, grid)])
    }
}
