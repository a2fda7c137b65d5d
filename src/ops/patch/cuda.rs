//! The ViT's input side on CUDA (`kernels/patch.cu`): the launches of `src/ops/patch/wgpu.rs`, asynchronous on the
//! device's stream.

use super::params::{PatchParams, BLOCK};
use super::{Patch, PatchShape, TokensShape, KERNELS};
use crate::device::cuda::{cfg_block, Cuda};
use crate::error::Result;
use cudarc::driver::{CudaView, CudaViewMut, DeviceRepr, PushKernelArg};

// SAFETY: #[repr(C)] plain-old-data (twelve u32), the layout of `struct PatchParams` in kernels/patch.cu.
unsafe impl DeviceRepr for PatchParams {}

impl Cuda {
    /// Launches `entry(PatchParams, out, inp)` of patch.cu over `(p, grid)`.
    fn patch_pair(&self, entry: &'static str, (p, grid): (PatchParams, crate::ops::launch::Grid), out: &mut CudaViewMut<f32>, inp: &CudaView<f32>) -> Result<()> {
        let f = KERNELS.cuda_function(self.stream(), entry)?;
        // SAFETY: the two-buffer kernels of patch.cu are entry(PatchParams, float* out, const float* inp); each
        // caller checked both lengths against the shape, and thread e < P.len touches the element (or column) e of
        // its output and the input elements it maps to (inside the checked lengths).
        unsafe { self.stream().launch_builder(&f).arg(&p).arg(out).arg(inp).launch(cfg_block(grid, BLOCK)) }?;
        Ok(())
    }
}

impl Patch for Cuda {
    fn patch_im2col(&mut self, mut cols: CudaViewMut<'_, f32>, images: CudaView<'_, f32>, shape: &PatchShape) -> Result<()> {
        shape.check(("images", images.len()), ("cols", cols.len()))?;
        self.patch_pair("patch_im2col", PatchParams::im2col(shape), &mut cols, &images)
    }
    fn patch_im2col_backward(&mut self, mut dimages: CudaViewMut<'_, f32>, dcols: CudaView<'_, f32>, shape: &PatchShape) -> Result<()> {
        shape.check(("dimages", dimages.len()), ("dcols", dcols.len()))?;
        self.patch_pair("patch_im2col_backward", PatchParams::im2col(shape), &mut dimages, &dcols)
    }
    fn tokens_forward(&mut self, mut tokens: CudaViewMut<'_, f32>, patches: CudaView<'_, f32>, cls: CudaView<'_, f32>, pos: CudaView<'_, f32>, shape: &TokensShape) -> Result<()> {
        shape.check_forward(tokens.len(), patches.len(), cls.len(), pos.len())?;
        let (p, grid) = PatchParams::tokens(shape, shape.len());
        let f = KERNELS.cuda_function(self.stream(), "tokens_forward")?;
        // SAFETY: tokens_forward(PatchParams, float* tokens [B*T*C], const float* patches [B*P*C], const float* cls
        // [C], const float* pos [T*C]); lengths checked above; thread e < B*T*C writes tokens[e] and reads patches
        // only for t >= 1 (so never when P = 0).
        unsafe { self.stream().launch_builder(&f).arg(&p).arg(&mut tokens).arg(&patches).arg(&cls).arg(&pos).launch(cfg_block(grid, BLOCK)) }?;
        Ok(())
    }
    fn tokens_backward(&mut self, dpatches: Option<CudaViewMut<'_, f32>>, dcls: Option<CudaViewMut<'_, f32>>, dtokens: CudaView<'_, f32>, shape: &TokensShape) -> Result<()> {
        shape.check_backward(dpatches.as_ref().map(|d| d.len()), dcls.as_ref().map(|d| d.len()), dtokens.len())?;
        let np = shape.b() * shape.patches() * shape.c();
        if let Some(mut d) = dpatches.filter(|_| np > 0) {
            self.patch_pair("tokens_backward_patches", PatchParams::tokens(shape, np), &mut d, &dtokens)?;
        }
        if let Some(mut d) = dcls {
            self.patch_pair("tokens_backward_cls", PatchParams::tokens(shape, shape.c()), &mut d, &dtokens)?;
        }
        Ok(())
    }
    fn cls_select_forward(&mut self, mut out: CudaViewMut<'_, f32>, tokens: CudaView<'_, f32>, shape: &TokensShape) -> Result<()> {
        shape.check_cls("cls_select_forward", ("out", out.len()), ("tokens", tokens.len()))?;
        self.patch_pair("cls_select_forward", PatchParams::tokens(shape, shape.b() * shape.c()), &mut out, &tokens)
    }
    fn cls_select_backward(&mut self, mut dtokens: CudaViewMut<'_, f32>, dout: CudaView<'_, f32>, shape: &TokensShape) -> Result<()> {
        shape.check_cls("cls_select_backward", ("dout", dout.len()), ("dtokens", dtokens.len()))?;
        self.patch_pair("cls_select_backward", PatchParams::tokens(shape, shape.b() * shape.c()), &mut dtokens, &dout)
    }
}
