//! The non-finite count on wgpu (`shaders/finite.wgsl`).

use super::{Finite, FiniteShape, KERNELS};
use crate::device::wgpu::{GpuSlice, Launch, Wgpu};
use crate::error::Result;

impl Finite for Wgpu {
    fn count_nonfinite(&mut self, count: GpuSlice<'_>, x: GpuSlice<'_>, shape: &FiniteShape) -> Result<()> {
        shape.check(count.len(), x.len())?;
        let (p, grid) = shape.launch();
        self.run(&KERNELS, vec![Launch::new("count_nonfinite", &p, vec![(1, count), (2, x)], grid)])
    }
}
