//! Row normalisation on CUDA (`kernels/normalize.cu`).

use super::params::NormalizeParams;
use super::{Normalize, NormalizeShape, KERNELS};
use crate::device::cuda::{cfg, Cuda};
use crate::error::Result;
use cudarc::driver::{CudaStream, CudaView, CudaViewMut, DeviceRepr, PushKernelArg};
use std::sync::Arc;

// SAFETY: #[repr(C)] plain-old-data of four u32, the layout of `struct NormalizeParams` in kernels/normalize.cu.
unsafe impl DeviceRepr for NormalizeParams {}
const _: () = assert!(std::mem::size_of::<NormalizeParams>() == 16);

/// `x_hat[r, :] = x[r, :] / max(||x[r, :]||, 1e-12)`, `inv_norm[r] = 1 / max(||x[r, :]||, 1e-12)`; `x, x_hat:
/// [rows, C]`, `inv_norm: [rows]`. Launches `normalize_rows`, one 256-thread block per row, on `stream`.
pub fn normalize_rows(stream: &Arc<CudaStream>, x_hat: &mut CudaViewMut<'_, f32>, inv_norm: &mut CudaViewMut<'_, f32>, x: &CudaView<'_, f32>, shape: &NormalizeShape) -> Result<()> {
    shape.check(x.len(), x_hat.len(), inv_norm.len())?;
    let (p, grid) = NormalizeParams::launch(shape);
    let f = KERNELS.cuda_function(stream, "normalize_rows")?;
    // SAFETY: normalize_rows(NormalizeParams, const float* x [rows*C], float* x_hat [rows*C], float* inv_norm
    // [rows]); block r < rows reads and writes row r only; the lengths were checked above.
    unsafe { stream.launch_builder(&f).arg(&p).arg(x).arg(x_hat).arg(inv_norm).launch(cfg(grid)) }?;
    Ok(())
}

impl Normalize for Cuda {
    fn normalize_rows(&mut self, mut x_hat: CudaViewMut<'_, f32>, mut inv_norm: CudaViewMut<'_, f32>, x: CudaView<'_, f32>, shape: &NormalizeShape) -> Result<()> {
        normalize_rows(self.stream(), &mut x_hat, &mut inv_norm, &x, shape)
    }
}
