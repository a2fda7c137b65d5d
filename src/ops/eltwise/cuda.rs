//! The element-wise layers on CUDA (`kernels/eltwise.cu`): one thread per element, asynchronous on the device's
//! stream. Every kernel takes `(EltwiseParams, outputs..., inputs...)` in the order of the trait's arguments.

use super::params::EltwiseParams;
use super::{Eltwise, EltwiseShape, KERNELS};
use crate::device::cuda::{cfg, Cuda};
use crate::error::Result;
use cudarc::driver::{CudaView, CudaViewMut, DeviceRepr, PushKernelArg};

// SAFETY: #[repr(C)] plain-old-data (four u32), the layout of `struct EltwiseParams` in kernels/eltwise.cu.
unsafe impl DeviceRepr for EltwiseParams {}

/// The second buffer of a kernel: an output (`add_backward`'s `db`) or an input.
enum Second<'a, 'b> {
    Out(&'a mut CudaViewMut<'b, f32>),
    In(&'a CudaView<'b, f32>),
}

impl Cuda {
    /// Checks the lengths against `shape` and launches `entry(EltwiseParams, a, b[, c])`.
    fn eltwise(&self, entry: &'static str, shape: &EltwiseShape, a: &mut CudaViewMut<f32>, b: Second<'_, '_>, c: Option<&CudaView<f32>>, names: [&str; 3]) -> Result<()> {
        let (p, grid) = EltwiseParams::launch(shape)?;
        let b_len = match &b {
            Second::Out(v) => v.len(),
            Second::In(v) => v.len(),
        };
        let mut lens = vec![(names[0], a.len()), (names[1], b_len)];
        lens.extend(c.map(|c| (names[2], c.len())));
        shape.check(&lens)?;
        let f = KERNELS.cuda_function(self.stream(), entry)?;
        let mut l = self.stream().launch_builder(&f);
        l.arg(&p).arg(a);
        match b {
            Second::Out(v) => l.arg(v),
            Second::In(v) => l.arg(v),
        };
        if let Some(c) = c {
            l.arg(c);
        }
        // SAFETY: every kernel of eltwise.cu is entry(EltwiseParams, float* / const float* [len] x 2 or 3) in this
        // order (the trait's); every length was checked equal to len above; thread i < len touches index i only.
        unsafe { l.launch(cfg(grid)) }?;
        Ok(())
    }
}

impl Eltwise for Cuda {
    fn relu_forward(&mut self, mut out: CudaViewMut<'_, f32>, inp: CudaView<'_, f32>, shape: &EltwiseShape) -> Result<()> {
        self.eltwise("relu_forward", shape, &mut out, Second::In(&inp), None, ["out", "inp", ""])
    }
    fn relu_backward(&mut self, mut dinp: CudaViewMut<'_, f32>, dout: CudaView<'_, f32>, out: CudaView<'_, f32>, shape: &EltwiseShape) -> Result<()> {
        self.eltwise("relu_backward", shape, &mut dinp, Second::In(&dout), Some(&out), ["dinp", "dout", "out"])
    }
    fn gelu_forward(&mut self, mut out: CudaViewMut<'_, f32>, inp: CudaView<'_, f32>, shape: &EltwiseShape) -> Result<()> {
        self.eltwise("gelu_forward", shape, &mut out, Second::In(&inp), None, ["out", "inp", ""])
    }
    fn gelu_backward(&mut self, mut dinp: CudaViewMut<'_, f32>, dout: CudaView<'_, f32>, inp: CudaView<'_, f32>, shape: &EltwiseShape) -> Result<()> {
        self.eltwise("gelu_backward", shape, &mut dinp, Second::In(&dout), Some(&inp), ["dinp", "dout", "inp"])
    }
    fn add_forward(&mut self, mut out: CudaViewMut<'_, f32>, a: CudaView<'_, f32>, b: CudaView<'_, f32>, shape: &EltwiseShape) -> Result<()> {
        self.eltwise("add_forward", shape, &mut out, Second::In(&a), Some(&b), ["out", "a", "b"])
    }
    fn add_backward(&mut self, mut da: CudaViewMut<'_, f32>, mut db: CudaViewMut<'_, f32>, dout: CudaView<'_, f32>, shape: &EltwiseShape) -> Result<()> {
        self.eltwise("add_backward", shape, &mut da, Second::Out(&mut db), Some(&dout), ["da", "db", "dout"])
    }
}
