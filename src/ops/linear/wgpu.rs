//! The linear layer on wgpu (`shaders/linear.wgsl`): one strided `gemm` per product and `bias_backward` for the
//! bias gradient. Every GEMM is planned (and its grid checked) before the first dispatch, so an error writes
//! nothing.

use super::params::{bias_backward, GemmLaunch};
use super::{Linear, LinearShape, KERNELS};
use crate::device::wgpu::{GpuSlice, Launch, Wgpu};
use crate::error::Result;

/// The dispatch of one GEMM `C (+)= A.B (+ bias)`; a 16-byte dummy stands in for an absent bias.
fn gemm<'a>(g: GemmLaunch, c: GpuSlice<'a>, a: GpuSlice<'a>, b: GpuSlice<'a>, bias: GpuSlice<'a>) -> Launch<'a> {
    Launch::new("gemm", &g.params, vec![(1, a), (2, b), (3, c), (4, bias)], g.grid)
}

impl Linear for Wgpu {
    fn linear_forward(&mut self, out: GpuSlice<'_>, inp: GpuSlice<'_>, weight: GpuSlice<'_>, bias: Option<GpuSlice<'_>>, shape: &LinearShape) -> Result<()> {
        let s = shape.revalidate()?;
        s.check_forward(out.len(), inp.len(), weight.len(), bias.map(|b| b.len()))?;
        let g = GemmLaunch::linear_forward(&s, bias.is_some())?;
        let dummy = self.dummy();
        self.run(&KERNELS, vec![gemm(g, out, inp, weight, bias.unwrap_or(GpuSlice::from(&dummy)))])
    }
    fn linear_backward(&mut self, dinp: Option<GpuSlice<'_>>, dweight: GpuSlice<'_>, dbias: Option<GpuSlice<'_>>, dout: GpuSlice<'_>, inp: GpuSlice<'_>, weight: GpuSlice<'_>, shape: &LinearShape) -> Result<()> {
        let s = shape.revalidate()?;
        s.check_backward(dinp.map(|d| d.len()), dweight.len(), dbias.map(|d| d.len()), dout.len(), inp.len(), weight.len())?;
        let (data, wgrad) = (GemmLaunch::linear_backward_data(&s)?, GemmLaunch::linear_backward_weight(&s)?);
        let dummy = self.dummy();
        let dummy = GpuSlice::from(&dummy);
        let mut launches = Vec::new();
        if let Some(dx) = dinp {
            // dinp [N, IN] += dout [N, OUT] . weight [OUT, IN]
            launches.push(gemm(data, dx, dout, weight, dummy));
        }
        // dweight [OUT, IN] += dout^T . inp
        launches.push(gemm(wgrad, dweight, dout, inp, dummy));
        if let Some(db) = dbias {
            let (p, grid) = bias_backward(&s);
            launches.push(Launch::new("bias_backward", &p, vec![(5, dout), (6, db)], grid));
        }
        self.run(&KERNELS, launches)
    }
}
