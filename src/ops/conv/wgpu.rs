//! 2-D convolution on wgpu (`shaders/conv.wgsl`): forward, backward-data and backward-weight as tiled implicit
//! GEMMs (64x64 workgroup tiles, 16-deep K chunks, 256 threads with 4x4 register micro-tiles; im2col gathered on
//! the fly; the weight gradient split over K into partial tiles, in a scratch buffer kept per device, and reduced
//! in order).

use super::params::{conv_revalidate, ConvParams};
use super::{Conv, Conv2dShape, KERNELS};
use crate::device::wgpu::{GpuSlice, Launch, Wgpu};
use crate::error::Result;

impl Conv for Wgpu {
    fn conv2d_forward(&mut self, out: GpuSlice<'_>, inp: GpuSlice<'_>, weight: GpuSlice<'_>, shape: &Conv2dShape) -> Result<()> {
        shape.check_forward(out.len(), inp.len(), weight.len())?;
        let s = conv_revalidate(shape)?;
        let p = ConvParams::forward(&s);
        let grid = p.grid("conv2d_forward")?;
        self.run(&KERNELS, vec![Launch::new("conv2d_forward", &p, vec![(1, inp), (2, weight), (4, out)], grid)])
    }
    fn conv2d_backward(&mut self, dinp: Option<GpuSlice<'_>>, dweight: GpuSlice<'_>, dout: GpuSlice<'_>, inp: GpuSlice<'_>, weight: GpuSlice<'_>, shape: &Conv2dShape) -> Result<()> {
        shape.check_backward(dinp.map(|d| d.len()), dweight.len(), dout.len(), inp.len(), weight.len())?;
        let s = conv_revalidate(shape)?;
        let (wp, phases) = (ConvParams::backward_weight(&s), ConvParams::backward_data(&s));
        let wg = wp.backward_weight_grid("conv2d_backward")?;
        let data_grids = phases.iter().map(|dp| dp.grid("conv2d_backward")).collect::<Result<Vec<_>>>()?;
        let bytes = (wp.partial_len() * 4) as u64;
        // the device's scratch, grown to the largest layer (the next conv's writes follow this one's reads)
        let partial = self.scratch("moco conv wgrad partial", bytes);
        let part = GpuSlice::from(&partial);
        let mut launches = vec![
            Launch::new("conv2d_backward_weight", &wp, vec![(1, inp), (3, dout), (5, part)], wg),
            Launch::new("conv2d_backward_weight_reduce", &wp, vec![(5, part), (4, dweight)], wp.backward_weight_reduce_grid()),
        ];
        if let Some(d) = dinp {
            // one dispatch per phase of the stride (ConvParams::backward_data); their pixels are disjoint
            for (dp, dg) in phases.iter().zip(data_grids) {
                launches.push(Launch::new("conv2d_backward_data", dp, vec![(2, weight), (3, dout), (4, d)], dg));
            }
        }
        self.run(&KERNELS, launches)
    }
}
