//! Batch norm on CUDA (`kernels/batchnorm.cu`): the launch sequence of `src/ops/batchnorm/wgpu.rs` (statistics,
//! running update, apply; backward sums, coefficients, gradient). Absent optional tensors are passed as null
//! pointers, which the kernels never dereference (every access is gated by a flag). The scratch (`var_gc`, `sums`,
//! `coef`) is the device's reused workspace (each element written before it is read); everything runs on its stream.

use super::params::{channel_grid, flags, stat_grid, BatchNormParams};
use super::{BatchNorm, BatchNormShape, Epilogue, EpilogueGrad, KERNELS};
use crate::device::cuda::{cfg, push_opt, push_opt_mut, Cuda};
use crate::error::Result;
use crate::ops::launch::elem_grid;
use cudarc::driver::{CudaStream, CudaView, CudaViewMut, DeviceRepr, PushKernelArg};
use std::sync::Arc;

// SAFETY: #[repr(C)] plain-old-data (eight u32, four f32), the layout of `struct BatchNormParams` in
// kernels/batchnorm.cu.
unsafe impl DeviceRepr for BatchNormParams {}

fn flag(on: bool, f: u32) -> u32 {
    if on {
        f
    } else {
        0
    }
}

/// `bn_apply`: `out = (x - mean)·rstd·gamma + beta (+ identity) (then ReLU)`, one thread per element. Under
/// [`flags::EVAL`], `mean`/`rstd` are the running mean and variance `[C]`.
#[allow(clippy::too_many_arguments)]
fn apply(stream: &Arc<CudaStream>, out: &mut CudaViewMut<f32>, inp: &CudaView<f32>, mean: &CudaView<f32>, rstd: &CudaView<f32>, gamma: Option<&CudaView<f32>>, beta: Option<&CudaView<f32>>, identity: Option<&CudaView<f32>>, s: &BatchNormShape, fl: u32) -> Result<()> {
    let p = BatchNormParams::new(s, fl | flag(gamma.is_some(), flags::GAMMA) | flag(beta.is_some(), flags::BETA));
    let f = KERNELS.cuda_function(stream, "bn_apply")?;
    let mut b = stream.launch_builder(&f);
    b.arg(&p).arg(inp).arg(out).arg(mean).arg(rstd);
    push_opt(&mut b, gamma);
    push_opt(&mut b, beta);
    push_opt(&mut b, identity);
    // SAFETY: bn_apply(BatchNormParams, const float* inp [len], float* out [len], const float* mean, const float*
    // rstd ([G*C], or [C] under FLAG_EVAL), const float* gamma [C], const float* beta [C], const float* identity
    // [len]); the callers checked every length; gamma, beta and identity are null exactly when FLAG_GAMMA,
    // FLAG_BETA and FLAG_ADD are clear, and the kernel reads them only under those flags; thread i < len touches
    // element i.
    unsafe { b.launch(cfg(elem_grid(s.len()))) }?;
    Ok(())
}

/// The epilogue's flags and its identity (when it adds one).
fn epilogue_flags<'a, 'b>(epi: &'a Epilogue<CudaView<'b, f32>>) -> (u32, Option<&'a CudaView<'b, f32>>) {
    match epi {
        Epilogue::None => (0, None),
        Epilogue::Relu => (flags::RELU, None),
        Epilogue::AddRelu(id) => (flags::RELU | flags::ADD, Some(id)),
    }
}

impl BatchNorm for Cuda {
    fn batchnorm_forward_train(&mut self, mut out: CudaViewMut<'_, f32>, mut mean: CudaViewMut<'_, f32>, mut rstd: CudaViewMut<'_, f32>, mut running_mean: CudaViewMut<'_, f32>, mut running_var: CudaViewMut<'_, f32>, inp: CudaView<'_, f32>, epilogue: Epilogue<CudaView<'_, f32>>, gamma: Option<CudaView<'_, f32>>, beta: Option<CudaView<'_, f32>>, shape: &BatchNormShape) -> Result<()> {
        let s = shape.revalidate()?;
        let (epi, identity) = epilogue_flags(&epilogue);
        s.check_train(out.len(), mean.len(), rstd.len(), running_mean.len(), running_var.len(), inp.len(), identity.map(|v| v.len()), gamma.as_ref().map(|v| v.len()), beta.as_ref().map(|v| v.len()))?;
        let grid = stat_grid(&s)?;
        let (stream, ws) = self.workspace();
        let stream = &stream;
        let p = BatchNormParams::new(&s, 0);
        let [mut var_gc] = ws.f32s.take(stream, [s.stats_len()])?;
        let f = KERNELS.cuda_function(stream, "bn_stats")?;
        // SAFETY: bn_stats(BatchNormParams, const float* inp [len], float* mean [G*C], float* rstd [G*C], float*
        // var_gc [G*C]); lengths checked above; block gc < G*C reads the M = count elements of its statistic
        // (stat_offset < len) and thread 0 writes index gc.
        unsafe { stream.launch_builder(&f).arg(&p).arg(&inp).arg(&mut mean).arg(&mut rstd).arg(&mut var_gc).launch(cfg(grid)) }?;
        let var_gc = var_gc.into_view();
        let f = KERNELS.cuda_function(stream, "bn_running")?;
        // SAFETY: bn_running(BatchNormParams, const float* mean [G*C], const float* var_gc [G*C], float*
        // running_mean [C], float* running_var [C]); thread ch < C reads (g, ch) for g < G and updates index ch;
        // count >= 2 (checked).
        unsafe { stream.launch_builder(&f).arg(&p).arg(&mean.as_view()).arg(&var_gc).arg(&mut running_mean).arg(&mut running_var).launch(cfg(channel_grid(&s))) }?;
        apply(stream, &mut out, &inp, &mean.as_view(), &rstd.as_view(), gamma.as_ref(), beta.as_ref(), identity, &s, epi)
    }

    fn batchnorm_forward_eval(&mut self, mut out: CudaViewMut<'_, f32>, inp: CudaView<'_, f32>, epilogue: Epilogue<CudaView<'_, f32>>, running_mean: CudaView<'_, f32>, running_var: CudaView<'_, f32>, gamma: Option<CudaView<'_, f32>>, beta: Option<CudaView<'_, f32>>, shape: &BatchNormShape) -> Result<()> {
        let s = shape.revalidate()?;
        let (epi, identity) = epilogue_flags(&epilogue);
        s.check_eval(out.len(), inp.len(), identity.map(|v| v.len()), running_mean.len(), running_var.len(), gamma.as_ref().map(|v| v.len()), beta.as_ref().map(|v| v.len()))?;
        apply(self.stream(), &mut out, &inp, &running_mean, &running_var, gamma.as_ref(), beta.as_ref(), identity, &s, epi | flags::EVAL)
    }

    fn batchnorm_backward<'a>(&mut self, mut dinp: CudaViewMut<'a, f32>, epilogue: EpilogueGrad<CudaView<'a, f32>, CudaViewMut<'a, f32>>, mut dgamma: Option<CudaViewMut<'a, f32>>, mut dbeta: Option<CudaViewMut<'a, f32>>, dout: CudaView<'a, f32>, inp: CudaView<'a, f32>, mean: CudaView<'a, f32>, rstd: CudaView<'a, f32>, gamma: Option<CudaView<'a, f32>>, shape: &BatchNormShape) -> Result<()> {
        let s = shape.revalidate()?;
        let (out, mut didentity) = match epilogue {
            EpilogueGrad::None => (None, None),
            EpilogueGrad::Relu { out } => (Some(out), None),
            EpilogueGrad::AddRelu { out, didentity } => (Some(out), Some(didentity)),
        };
        let len_mut = |v: &Option<CudaViewMut<f32>>| v.as_ref().map(|v| v.len());
        s.check_backward(dinp.len(), len_mut(&didentity), len_mut(&dgamma), len_mut(&dbeta), dout.len(), out.as_ref().map(|v| v.len()), inp.len(), mean.len(), rstd.len(), gamma.as_ref().map(|v| v.len()))?;
        let grid = stat_grid(&s)?;
        let fl = flag(gamma.is_some(), flags::GAMMA) | flag(out.is_some(), flags::RELU) | flag(didentity.is_some(), flags::ADD) | flag(dgamma.is_some(), flags::DGAMMA) | flag(dbeta.is_some(), flags::DBETA);
        let p = BatchNormParams::new(&s, fl);
        let (stream, ws) = self.workspace();
        let stream = &stream;
        let [mut sums, mut coef] = ws.f32s.take(stream, [s.stats_len() * 2, s.stats_len() * 3])?;

        let f = KERNELS.cuda_function(stream, "bn_backward_sums")?;
        let mut b = stream.launch_builder(&f);
        b.arg(&p).arg(&inp).arg(&dout);
        push_opt(&mut b, out.as_ref());
        b.arg(&mut sums).arg(&mean).arg(&rstd);
        // SAFETY: bn_backward_sums(BatchNormParams, const float* inp [len], const float* dout [len], const float* y
        // [len], float* sums [G*C*2], const float* mean_in [G*C], const float* rstd_in [G*C]); lengths checked
        // above; y is null exactly when FLAG_RELU is clear and is read only under it; block gc < G*C writes
        // sums[2gc..2gc+2].
        unsafe { b.launch(cfg(grid)) }?;

        let sums = sums.into_view();
        let f = KERNELS.cuda_function(stream, "bn_backward_coef")?;
        let mut b = stream.launch_builder(&f);
        b.arg(&p);
        push_opt(&mut b, gamma.as_ref());
        b.arg(&sums).arg(&mut coef);
        push_opt_mut(&mut b, dgamma.as_mut());
        push_opt_mut(&mut b, dbeta.as_mut());
        b.arg(&rstd);
        // SAFETY: bn_backward_coef(BatchNormParams, const float* gamma [C], const float* sums [G*C*2], float* coef
        // [G*C*3], float* dgamma [C], float* dbeta [C], const float* rstd_in [G*C]); gamma, dgamma, dbeta are null
        // exactly when FLAG_GAMMA, FLAG_DGAMMA, FLAG_DBETA are clear and touched only under them; thread ch < C
        // touches channel ch and statistics (g, ch).
        unsafe { b.launch(cfg(channel_grid(&s))) }?;

        let coef = coef.into_view();
        let f = KERNELS.cuda_function(stream, "bn_backward_dx")?;
        let mut b = stream.launch_builder(&f);
        b.arg(&p).arg(&inp).arg(&dout);
        push_opt(&mut b, out.as_ref());
        b.arg(&coef).arg(&mut dinp);
        push_opt_mut(&mut b, didentity.as_mut());
        b.arg(&mean);
        // SAFETY: bn_backward_dx(BatchNormParams, const float* inp [len], const float* dout [len], const float* y
        // [len], const float* coef [G*C*3], float* dinp [len], float* didentity [len], const float* mean_in [G*C]);
        // y and didentity are null exactly when FLAG_RELU and FLAG_ADD are clear and touched only under them;
        // thread i < len touches element i.
        unsafe { b.launch(cfg(elem_grid(s.len()))) }?;
        Ok(())
    }
}
