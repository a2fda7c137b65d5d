//! Layer norm on wgpu (`shaders/layernorm.wgsl`): one 128-thread workgroup per row (forward, backward dx), one
//! thread per column for dgamma/dbeta (rows in order, deterministic).

use super::params::{col_grid, row_grid, LayerNormParams};
use super::{LayerNorm, LayerNormShape, KERNELS};
use crate::device::wgpu::{GpuSlice, Launch, Wgpu};
use crate::error::Result;

impl LayerNorm for Wgpu {
    fn layernorm_forward(&mut self, out: GpuSlice<'_>, mean: GpuSlice<'_>, rstd: GpuSlice<'_>, inp: GpuSlice<'_>, gamma: GpuSlice<'_>, beta: GpuSlice<'_>, shape: &LayerNormShape) -> Result<()> {
        shape.check_forward(out.len(), mean.len(), rstd.len(), inp.len(), gamma.len(), beta.len())?;
        let p = LayerNormParams::new(shape);
        self.run(&KERNELS, vec![Launch::new("layernorm_forward", &p, vec![(1, out), (2, mean), (3, rstd), (4, inp), (5, gamma), (6, beta)], row_grid(shape))])
    }
    fn layernorm_backward(&mut self, dinp: GpuSlice<'_>, dgamma: GpuSlice<'_>, dbeta: GpuSlice<'_>, dout: GpuSlice<'_>, inp: GpuSlice<'_>, gamma: GpuSlice<'_>, mean: GpuSlice<'_>, rstd: GpuSlice<'_>, shape: &LayerNormShape) -> Result<()> {
        shape.check_backward(dinp.len(), dgamma.len(), dbeta.len(), dout.len(), inp.len(), gamma.len(), mean.len(), rstd.len())?;
        let p = LayerNormParams::new(shape);
        self.run(
            &KERNELS,
            vec![
                Launch::new("layernorm_backward_dx", &p, vec![(7, dinp), (8, dout), (4, inp), (5, gamma), (2, mean), (3, rstd)], row_grid(shape)),
                Launch::new("layernorm_backward_params", &p, vec![(9, dgamma), (10, dbeta), (8, dout), (4, inp), (2, mean), (3, rstd)], col_grid(shape)),
            ],
        )
    }
}
