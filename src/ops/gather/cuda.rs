//! The row gather on CUDA (`kernels/gather.cu`), asynchronous on the device's stream.

use super::{Gather, GatherParams, GatherShape, KERNELS};
use crate::device::cuda::{cfg, Cuda};
use crate::error::Result;
use cudarc::driver::{CudaView, CudaViewMut, DeviceRepr, PushKernelArg};

// SAFETY: #[repr(C)] plain-old-data of four u32, the layout of `struct GatherParams` in kernels/gather.cu.
unsafe impl DeviceRepr for GatherParams {}

impl Gather for Cuda {
    fn gather_rows(&mut self, mut out: CudaViewMut<'_, f32>, idx: CudaView<'_, u32>, x: CudaView<'_, f32>, shape: &GatherShape) -> Result<()> {
        let s = shape.revalidate()?;
        s.check(out.len(), idx.len(), x.len())?;
        let (p, grid) = s.launch();
        let f = KERNELS.cuda_function(self.stream(), "gather_rows")?;
        // SAFETY: gather_rows(GatherParams, float* out [rows*row], const unsigned* idx [rows], const float* x
        // [src_rows*row]); lengths checked above; thread e < rows*row writes out[e] and reads idx[e / row] and, only
        // when that index is below src_rows, x at an element below src_rows*row.
        unsafe { self.stream().launch_builder(&f).arg(&p).arg(&mut out).arg(&idx).arg(&x).launch(cfg(grid)) }?;
        Ok(())
    }
}
