//! Pooling on wgpu (`shaders/pool.wgsl`): one thread per output (max forward), per input pixel (max backward, a
//! gather: deterministic, no atomics), per plane (average forward) or per input element (average backward).

use super::params::{avgpool_backward_grid, avgpool_forward_grid, maxpool_backward_grid, maxpool_forward_grid, PoolParams};
use super::{GlobalAvgPoolShape, MaxPool2dShape, Pool, KERNELS};
use crate::device::wgpu::{GpuSlice, Launch, Wgpu};
use crate::error::Result;

impl Pool for Wgpu {
    fn maxpool2d_forward(&mut self, out: GpuSlice<'_>, argmax: GpuSlice<'_>, inp: GpuSlice<'_>, shape: &MaxPool2dShape) -> Result<()> {
        let p = PoolParams::maxpool(shape)?;
        shape.check(("inp", inp.len()), ("out", out.len()), argmax.len())?;
        self.run(&KERNELS, vec![Launch::new("maxpool_forward", &p, vec![(1, inp), (2, out), (3, argmax)], maxpool_forward_grid(shape))])
    }
    fn maxpool2d_backward(&mut self, dinp: GpuSlice<'_>, dout: GpuSlice<'_>, argmax: GpuSlice<'_>, shape: &MaxPool2dShape) -> Result<()> {
        let p = PoolParams::maxpool(shape)?;
        shape.check(("dinp", dinp.len()), ("dout", dout.len()), argmax.len())?;
        self.run(&KERNELS, vec![Launch::new("maxpool_backward", &p, vec![(4, argmax), (5, dout), (6, dinp)], maxpool_backward_grid(shape))])
    }
    fn global_avgpool_forward(&mut self, out: GpuSlice<'_>, inp: GpuSlice<'_>, shape: &GlobalAvgPoolShape) -> Result<()> {
        let p = PoolParams::avgpool(shape)?;
        shape.check(("inp", inp.len()), ("out", out.len()))?;
        self.run(&KERNELS, vec![Launch::new("avgpool_forward", &p, vec![(1, inp), (2, out)], avgpool_forward_grid(shape))])
    }
    fn global_avgpool_backward(&mut self, dinp: GpuSlice<'_>, dout: GpuSlice<'_>, shape: &GlobalAvgPoolShape) -> Result<()> {
        let p = PoolParams::avgpool(shape)?;
        shape.check(("dinp", dinp.len()), ("dout", dout.len()))?;
        self.run(&KERNELS, vec![Launch::new("avgpool_backward", &p, vec![(5, dout), (6, dinp)], avgpool_backward_grid(shape))])
    }
}
