//! The non-finite count on CUDA (`kernels/finite.cu`), asynchronous on the device's stream.

use super::{Finite, FiniteParams, FiniteShape, KERNELS};
use crate::device::cuda::{cfg, Cuda};
use crate::error::Result;
use cudarc::driver::{CudaView, CudaViewMut, DeviceRepr, PushKernelArg};

// SAFETY: #[repr(C)] plain-old-data of four u32, the layout of `struct FiniteParams` in kernels/finite.cu.
unsafe impl DeviceRepr for FiniteParams {}

impl Finite for Cuda {
    fn count_nonfinite(&mut self, mut count: CudaViewMut<'_, u32>, x: CudaView<'_, f32>, shape: &FiniteShape) -> Result<()> {
        shape.check(count.len(), x.len())?;
        let (p, grid) = shape.launch();
        let f = KERNELS.cuda_function(self.stream(), "count_nonfinite")?;
        // SAFETY: count_nonfinite(FiniteParams, unsigned* count [1], const float* x [len]); lengths checked above;
        // thread i reads x[i] only for i < len, and thread 0 of each block adds to count[0].
        unsafe { self.stream().launch_builder(&f).arg(&p).arg(&mut count).arg(&x).launch(cfg(grid)) }?;
        Ok(())
    }
}
