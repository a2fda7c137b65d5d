//! The row gather on wgpu (`shaders/gather.wgsl`).

use super::{Gather, GatherShape, KERNELS};
use crate::device::wgpu::{GpuSlice, Launch, Wgpu};
use crate::error::Result;

impl Gather for Wgpu {
    fn gather_rows(&mut self, out: GpuSlice<'_>, idx: GpuSlice<'_>, x: GpuSlice<'_>, shape: &GatherShape) -> Result<()> {
        let s = shape.revalidate()?;
        s.check(out.len(), idx.len(), x.len())?;
        let (p, grid) = s.launch();
        self.run(&KERNELS, vec![Launch::new("gather_rows", &p, vec![(1, out), (2, idx), (3, x)], grid)])
    }
}
