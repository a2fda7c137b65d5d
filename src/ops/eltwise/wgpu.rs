//! The element-wise layers on wgpu (`shaders/eltwise.wgsl`): one thread per element.

use super::params::EltwiseParams;
use super::{Eltwise, EltwiseShape, KERNELS};
use crate::device::wgpu::{GpuSlice, Launch, Wgpu};
use crate::error::Result;

impl Wgpu {
    /// Checks `bufs` against `shape` and runs `entry` over it, each buffer at its binding.
    fn eltwise(&self, entry: &'static str, shape: &EltwiseShape, bufs: [(&'static str, u32, GpuSlice<'_>); 3]) -> Result<()> {
        let (p, grid) = EltwiseParams::launch(shape)?;
        let used: Vec<_> = bufs.iter().filter(|b| !b.0.is_empty()).collect();
        shape.check(&used.iter().map(|b| (b.0, b.2.len())).collect::<Vec<_>>())?;
        self.run(&KERNELS, vec![Launch::new(entry, &p, used.iter().map(|b| (b.1, b.2)).collect(), grid)])
    }
}

impl Eltwise for Wgpu {
    fn relu_forward(&mut self, out: GpuSlice<'_>, inp: GpuSlice<'_>, shape: &EltwiseShape) -> Result<()> {
        self.eltwise("relu_forward", shape, [("out", 1, out), ("inp", 2, inp), ("", 0, inp)])
    }
    fn relu_backward(&mut self, dinp: GpuSlice<'_>, dout: GpuSlice<'_>, out: GpuSlice<'_>, shape: &EltwiseShape) -> Result<()> {
        self.eltwise("relu_backward", shape, [("dinp", 3, dinp), ("dout", 4, dout), ("out", 1, out)])
    }
    fn gelu_forward(&mut self, out: GpuSlice<'_>, inp: GpuSlice<'_>, shape: &EltwiseShape) -> Result<()> {
        self.eltwise("gelu_forward", shape, [("out", 1, out), ("inp", 2, inp), ("", 0, inp)])
    }
    fn gelu_backward(&mut self, dinp: GpuSlice<'_>, dout: GpuSlice<'_>, inp: GpuSlice<'_>, shape: &EltwiseShape) -> Result<()> {
        self.eltwise("gelu_backward", shape, [("dinp", 3, dinp), ("dout", 4, dout), ("inp", 2, inp)])
    }
    fn add_forward(&mut self, out: GpuSlice<'_>, a: GpuSlice<'_>, b: GpuSlice<'_>, shape: &EltwiseShape) -> Result<()> {
        self.eltwise("add_forward", shape, [("out", 1, out), ("a", 5, a), ("b", 6, b)])
    }
    fn add_backward(&mut self, da: GpuSlice<'_>, db: GpuSlice<'_>, dout: GpuSlice<'_>, shape: &EltwiseShape) -> Result<()> {
        self.eltwise("add_backward", shape, [("da", 7, da), ("db", 8, db), ("dout", 4, dout)])
    }
}
