//! Batch normalisation on CUDA (`kernels/norm.cu`), the same operations, validation and launch sequence as
//! [`crate::backend::wgpu::norm`] and [`crate::backend::cpu::nn::norm`]: training-mode forward (statistics per
//! (group, channel) with two-pass block reductions, running-statistic update), eval-mode forward, fused ReLU and
//! residual add + ReLU epilogues, and backward (accumulating into `dinp`, `dgamma`, `dbeta`, `didentity`).
//!
//! Buffers are cudarc views (see [`super::conv`]) of at least the element counts of [`BatchNormShape`]:
//! `inp, out: [N, C, HW]`, `mean, rstd: [G, C]`, `running_mean, running_var, gamma, beta: [C]`. `None` for
//! `gamma`/`beta` is affine = false. Absent optional tensors are passed to the kernels as null pointers, which
//! the kernels never dereference (every access is gated by a `FLAG_*` bit). Per-call scratch (`var_gc`, `sums`,
//! `coef`) is allocated on `stream`. Every function runs asynchronously on `stream`.

use super::conv::check_f32;
use super::context::{cfg, function};
use crate::backend::cpu::nn::BatchNormShape;
use crate::backend::plan::norm_flags::{ADD as FLAG_ADD, BETA as FLAG_BETA, DBETA as FLAG_DBETA, DGAMMA as FLAG_DGAMMA, EVAL as FLAG_EVAL, GAMMA as FLAG_GAMMA, RELU as FLAG_RELU};
use crate::backend::plan::{bn_channel_grid as channel_grid, bn_stat_grid as stat_grid, elem_grid, NormParams};
use crate::error::{Error, Result};
use cudarc::driver::{CudaStream, CudaView, CudaViewMut, DeviceRepr, LaunchArgs, PushKernelArg};
use std::sync::Arc;

const FILE: &str = "norm.cu";
const OP: &str = "batchnorm (cuda)";


/// The device pointer passed for an absent optional tensor.
static NULL_PTR: u64 = 0;

// SAFETY: #[repr(C)] plain-old-data (eight u32, four f32), the layout of `struct Params` in kernels/norm.cu.
unsafe impl DeviceRepr for NormParams {}
const _: () = assert!(std::mem::size_of::<NormParams>() == 48 && std::mem::align_of::<NormParams>() == 4);
const _: () = assert!(std::mem::offset_of!(NormParams, flags) == 24 && std::mem::offset_of!(NormParams, eps) == 32 && std::mem::offset_of!(NormParams, momentum) == 36);

/// What follows the normalisation in a fused forward (and is undone in backward).
#[derive(Clone, Copy)]
enum Epilogue<'a, 'b> {
    None,
    Relu,
    AddRelu(&'a CudaView<'b, f32>),
}

impl Epilogue<'_, '_> {
    fn flags(&self) -> u32 {
        match self {
            Epilogue::None => 0,
            Epilogue::Relu => FLAG_RELU,
            Epilogue::AddRelu(_) => FLAG_RELU | FLAG_ADD,
        }
    }
}

fn check_opt(what: &str, len: Option<usize>, elems: usize) -> Result<()> {
    len.map_or(Ok(()), |l| check_f32(OP, what, l, elems))
}

/// Re-validates a shape (its fields are public, so it may not have come from [`BatchNormShape::new`]).
fn revalidate(s: &BatchNormShape) -> Result<BatchNormShape> {
    BatchNormShape::new(s.n, s.c, s.hw, s.groups)?.with_eps_momentum(s.eps, s.momentum)
}

fn params(s: &BatchNormShape, flags: u32) -> NormParams {
    NormParams::new(s, flags)
}

fn affine_flags(gamma: Option<&CudaView<f32>>, beta: Option<&CudaView<f32>>) -> u32 {
    (if gamma.is_some() { FLAG_GAMMA } else { 0 }) | (if beta.is_some() { FLAG_BETA } else { 0 })
}

/// Pushes an optional input, or a null pointer.
pub(super) fn push_opt<'a, 'c: 'a>(b: &mut LaunchArgs<'a>, v: Option<&'a CudaView<'c, f32>>) {
    match v {
        Some(v) => b.arg(v),
        None => b.arg(&NULL_PTR),
    };
}

/// Pushes an optional output, or a null pointer.
pub(super) fn push_opt_mut<'a, 'c: 'a>(b: &mut LaunchArgs<'a>, v: Option<&'a mut CudaViewMut<'c, f32>>) {
    match v {
        Some(v) => b.arg(v),
        None => b.arg(&NULL_PTR),
    };
}

/// `bn_apply`: `out = (x - mean)·rstd·gamma + beta (+ identity) (then ReLU)`, one thread per element. With
/// `FLAG_EVAL`, `mean`/`rstd` are the running mean and variance `[C]`.
#[allow(clippy::too_many_arguments)]
fn apply(stream: &Arc<CudaStream>, out: &mut CudaViewMut<f32>, inp: &CudaView<f32>, mean: &CudaView<f32>, rstd: &CudaView<f32>, gamma: Option<&CudaView<f32>>, beta: Option<&CudaView<f32>>, identity: Option<&CudaView<f32>>, s: &BatchNormShape, flags: u32) -> Result<()> {
    let p = params(s, flags);
    let f = function(stream, FILE, "bn_apply")?;
    let mut b = stream.launch_builder(&f);
    b.arg(&p).arg(inp).arg(out).arg(mean).arg(rstd);
    push_opt(&mut b, gamma);
    push_opt(&mut b, beta);
    push_opt(&mut b, identity);
    // SAFETY: bn_apply(Params, const float* inp [len], float* out [len], const float* mean, const float* rstd
    // ([G*C], or [C] with FLAG_EVAL), const float* gamma [C], const float* beta [C], const float* identity [len]);
    // the callers checked every length; gamma, beta and identity are null exactly when FLAG_GAMMA, FLAG_BETA and
    // FLAG_ADD are clear, and the kernel reads them only under those flags; thread i < len touches element i.
    unsafe { b.launch(cfg(elem_grid(s.len()))) }?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn forward_train(stream: &Arc<CudaStream>, out: &mut CudaViewMut<f32>, mean: &mut CudaViewMut<f32>, rstd: &mut CudaViewMut<f32>, running_mean: &mut CudaViewMut<f32>, running_var: &mut CudaViewMut<f32>, inp: &CudaView<f32>, gamma: Option<&CudaView<f32>>, beta: Option<&CudaView<f32>>, epi: Epilogue, shape: &BatchNormShape) -> Result<()> {
    let s = revalidate(shape)?;
    check_f32(OP, "inp [N*C*HW]", inp.len(), s.len())?;
    check_f32(OP, "out [N*C*HW]", out.len(), s.len())?;
    check_f32(OP, "mean [G*C]", mean.len(), s.stats_len())?;
    check_f32(OP, "rstd [G*C]", rstd.len(), s.stats_len())?;
    check_f32(OP, "running_mean [C]", running_mean.len(), s.c)?;
    check_f32(OP, "running_var [C]", running_var.len(), s.c)?;
    check_opt("gamma [C]", gamma.map(|g| g.len()), s.c)?;
    check_opt("beta [C]", beta.map(|b| b.len()), s.c)?;
    if let Epilogue::AddRelu(id) = epi {
        check_f32(OP, "identity [N*C*HW]", id.len(), s.len())?;
    }
    if s.count() < 2 {
        return Err(Error::shape(OP, "more than one value per channel and group in training mode ((N/G)*HW >= 2)", format!("N = {}, G = {}, HW = {}", s.n, s.groups, s.hw)));
    }
    let grid = stat_grid(&s)?;
    let flags = affine_flags(gamma, beta) | epi.flags();
    let p = params(&s, flags);
    let mut var_gc = stream.alloc_zeros::<f32>(s.stats_len())?;
    let f = function(stream, FILE, "bn_stats")?;
    // SAFETY: bn_stats(Params, const float* inp [len], float* mean [G*C], float* rstd [G*C], float* var_gc [G*C]);
    // lengths checked above; block gc < G*C reads the M = count elements of its statistic (stat_offset < len) and
    // thread 0 writes index gc.
    unsafe { stream.launch_builder(&f).arg(&p).arg(inp).arg(&mut *mean).arg(&mut *rstd).arg(&mut var_gc).launch(cfg(grid)) }?;
    let f = function(stream, FILE, "bn_running")?;
    // SAFETY: bn_running(Params, const float* mean [G*C], const float* var_gc [G*C], float* running_mean [C],
    // float* running_var [C]); thread ch < C reads (g, ch) for g < G and updates index ch; count >= 2 (checked).
    unsafe { stream.launch_builder(&f).arg(&p).arg(&mean.as_view()).arg(&var_gc).arg(running_mean).arg(running_var).launch(cfg(channel_grid(&s))) }?;
    let identity = match epi {
        Epilogue::AddRelu(id) => Some(id),
        _ => None,
    };
    apply(stream, out, inp, &mean.as_view(), &rstd.as_view(), gamma, beta, identity, &s, flags)
}

#[allow(clippy::too_many_arguments)]
fn forward_eval(stream: &Arc<CudaStream>, out: &mut CudaViewMut<f32>, inp: &CudaView<f32>, running_mean: &CudaView<f32>, running_var: &CudaView<f32>, gamma: Option<&CudaView<f32>>, beta: Option<&CudaView<f32>>, epi: Epilogue, shape: &BatchNormShape) -> Result<()> {
    let s = revalidate(shape)?;
    check_f32(OP, "inp [N*C*HW]", inp.len(), s.len())?;
    check_f32(OP, "out [N*C*HW]", out.len(), s.len())?;
    check_f32(OP, "running_mean [C]", running_mean.len(), s.c)?;
    check_f32(OP, "running_var [C]", running_var.len(), s.c)?;
    check_opt("gamma [C]", gamma.map(|g| g.len()), s.c)?;
    check_opt("beta [C]", beta.map(|b| b.len()), s.c)?;
    if let Epilogue::AddRelu(id) = epi {
        check_f32(OP, "identity [N*C*HW]", id.len(), s.len())?;
    }
    let flags = affine_flags(gamma, beta) | epi.flags() | FLAG_EVAL;
    let identity = match epi {
        Epilogue::AddRelu(id) => Some(id),
        _ => None,
    };
    apply(stream, out, inp, running_mean, running_var, gamma, beta, identity, &s, flags)
}

#[allow(clippy::too_many_arguments)]
fn backward(stream: &Arc<CudaStream>, dinp: &mut CudaViewMut<f32>, didentity: Option<&mut CudaViewMut<f32>>, dgamma: Option<&mut CudaViewMut<f32>>, dbeta: Option<&mut CudaViewMut<f32>>, dout: &CudaView<f32>, out: Option<&CudaView<f32>>, inp: &CudaView<f32>, mean: &CudaView<f32>, rstd: &CudaView<f32>, gamma: Option<&CudaView<f32>>, shape: &BatchNormShape) -> Result<()> {
    let s = revalidate(shape)?;
    check_f32(OP, "dinp [N*C*HW]", dinp.len(), s.len())?;
    check_f32(OP, "dout [N*C*HW]", dout.len(), s.len())?;
    check_f32(OP, "inp [N*C*HW]", inp.len(), s.len())?;
    check_opt("out [N*C*HW]", out.map(|o| o.len()), s.len())?;
    check_opt("didentity [N*C*HW]", didentity.as_ref().map(|d| d.len()), s.len())?;
    check_f32(OP, "mean [G*C]", mean.len(), s.stats_len())?;
    check_f32(OP, "rstd [G*C]", rstd.len(), s.stats_len())?;
    check_opt("gamma [C]", gamma.map(|g| g.len()), s.c)?;
    check_opt("dgamma [C]", dgamma.as_ref().map(|d| d.len()), s.c)?;
    check_opt("dbeta [C]", dbeta.as_ref().map(|d| d.len()), s.c)?;
    let grid = stat_grid(&s)?;
    let mut flags = if gamma.is_some() { FLAG_GAMMA } else { 0 };
    if out.is_some() {
        flags |= FLAG_RELU;
    }
    if didentity.is_some() {
        flags |= FLAG_ADD;
    }
    if dgamma.is_some() {
        flags |= FLAG_DGAMMA;
    }
    if dbeta.is_some() {
        flags |= FLAG_DBETA;
    }
    let p = params(&s, flags);
    let mut sums = stream.alloc_zeros::<f32>(s.stats_len() * 2)?;
    let mut coef = stream.alloc_zeros::<f32>(s.stats_len() * 3)?;

    let f = function(stream, FILE, "bn_backward_sums")?;
    let mut b = stream.launch_builder(&f);
    b.arg(&p).arg(inp).arg(dout);
    push_opt(&mut b, out);
    b.arg(&mut sums).arg(mean).arg(rstd);
    // SAFETY: bn_backward_sums(Params, const float* inp [len], const float* dout [len], const float* y [len],
    // float* sums [G*C*2], const float* mean_in [G*C], const float* rstd_in [G*C]); lengths checked above; y is
    // null exactly when FLAG_RELU is clear and is read only under it; block gc < G*C writes sums[2gc..2gc+2].
    unsafe { b.launch(cfg(grid)) }?;

    let f = function(stream, FILE, "bn_backward_coef")?;
    let mut b = stream.launch_builder(&f);
    b.arg(&p);
    push_opt(&mut b, gamma);
    b.arg(&sums).arg(&mut coef);
    push_opt_mut(&mut b, dgamma);
    push_opt_mut(&mut b, dbeta);
    b.arg(rstd);
    // SAFETY: bn_backward_coef(Params, const float* gamma [C], const float* sums [G*C*2], float* coef [G*C*3],
    // float* dgamma [C], float* dbeta [C], const float* rstd_in [G*C]); gamma, dgamma, dbeta are null exactly
    // when FLAG_GAMMA, FLAG_DGAMMA, FLAG_DBETA are clear and touched only under them; thread ch < C touches
    // channel ch and statistics (g, ch).
    unsafe { b.launch(cfg(channel_grid(&s))) }?;

    let f = function(stream, FILE, "bn_backward_dx")?;
    let mut b = stream.launch_builder(&f);
    b.arg(&p).arg(inp).arg(dout);
    push_opt(&mut b, out);
    b.arg(&coef).arg(dinp);
    push_opt_mut(&mut b, didentity);
    b.arg(mean);
    // SAFETY: bn_backward_dx(Params, const float* inp [len], const float* dout [len], const float* y [len],
    // const float* coef [G*C*3], float* dinp [len], float* didentity [len], const float* mean_in [G*C]); y and
    // didentity are null exactly when FLAG_RELU and FLAG_ADD are clear and touched only under them; thread i < len
    // touches element i.
    unsafe { b.launch(cfg(elem_grid(s.len()))) }?;
    Ok(())
}

/// Batch norm forward, training mode (see [`crate::backend::cpu::nn::batchnorm_forward_train`]): writes `out`,
/// `mean, rstd: [G, C]` and updates `running_mean, running_var: [C]`.
///
/// Launches `bn_stats` (one block per (group, channel)), `bn_running` (one thread per channel) and `bn_apply`
/// (one thread per element).
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_forward_train(stream: &Arc<CudaStream>, out: &mut CudaViewMut<f32>, mean: &mut CudaViewMut<f32>, rstd: &mut CudaViewMut<f32>, running_mean: &mut CudaViewMut<f32>, running_var: &mut CudaViewMut<f32>, inp: &CudaView<f32>, gamma: Option<&CudaView<f32>>, beta: Option<&CudaView<f32>>, shape: &BatchNormShape) -> Result<()> {
    forward_train(stream, out, mean, rstd, running_mean, running_var, inp, gamma, beta, Epilogue::None, shape)
}

/// [`batchnorm_forward_train`] followed by ReLU.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_relu_forward_train(stream: &Arc<CudaStream>, out: &mut CudaViewMut<f32>, mean: &mut CudaViewMut<f32>, rstd: &mut CudaViewMut<f32>, running_mean: &mut CudaViewMut<f32>, running_var: &mut CudaViewMut<f32>, inp: &CudaView<f32>, gamma: Option<&CudaView<f32>>, beta: Option<&CudaView<f32>>, shape: &BatchNormShape) -> Result<()> {
    forward_train(stream, out, mean, rstd, running_mean, running_var, inp, gamma, beta, Epilogue::Relu, shape)
}

/// [`batchnorm_forward_train`] followed by a residual add and ReLU: `out = relu(bn(inp) + identity)`.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_add_relu_forward_train(stream: &Arc<CudaStream>, out: &mut CudaViewMut<f32>, mean: &mut CudaViewMut<f32>, rstd: &mut CudaViewMut<f32>, running_mean: &mut CudaViewMut<f32>, running_var: &mut CudaViewMut<f32>, inp: &CudaView<f32>, identity: &CudaView<f32>, gamma: Option<&CudaView<f32>>, beta: Option<&CudaView<f32>>, shape: &BatchNormShape) -> Result<()> {
    forward_train(stream, out, mean, rstd, running_mean, running_var, inp, gamma, beta, Epilogue::AddRelu(identity), shape)
}

/// Batch norm forward, eval mode (running statistics; groups play no role). Launches `bn_apply`.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_forward_eval(stream: &Arc<CudaStream>, out: &mut CudaViewMut<f32>, inp: &CudaView<f32>, running_mean: &CudaView<f32>, running_var: &CudaView<f32>, gamma: Option<&CudaView<f32>>, beta: Option<&CudaView<f32>>, shape: &BatchNormShape) -> Result<()> {
    forward_eval(stream, out, inp, running_mean, running_var, gamma, beta, Epilogue::None, shape)
}

/// [`batchnorm_forward_eval`] followed by ReLU.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_relu_forward_eval(stream: &Arc<CudaStream>, out: &mut CudaViewMut<f32>, inp: &CudaView<f32>, running_mean: &CudaView<f32>, running_var: &CudaView<f32>, gamma: Option<&CudaView<f32>>, beta: Option<&CudaView<f32>>, shape: &BatchNormShape) -> Result<()> {
    forward_eval(stream, out, inp, running_mean, running_var, gamma, beta, Epilogue::Relu, shape)
}

/// [`batchnorm_forward_eval`] followed by a residual add and ReLU.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_add_relu_forward_eval(stream: &Arc<CudaStream>, out: &mut CudaViewMut<f32>, inp: &CudaView<f32>, identity: &CudaView<f32>, running_mean: &CudaView<f32>, running_var: &CudaView<f32>, gamma: Option<&CudaView<f32>>, beta: Option<&CudaView<f32>>, shape: &BatchNormShape) -> Result<()> {
    forward_eval(stream, out, inp, running_mean, running_var, gamma, beta, Epilogue::AddRelu(identity), shape)
}

/// Backward of [`batchnorm_forward_train`]: `dinp += ...`, `dgamma += Σ dout·x̂`, `dbeta += Σ dout` (`None` skips).
///
/// Launches `bn_backward_sums` (one block per (group, channel)), `bn_backward_coef` (one thread per channel) and
/// `bn_backward_dx` (one thread per element).
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward(stream: &Arc<CudaStream>, dinp: &mut CudaViewMut<f32>, dgamma: Option<&mut CudaViewMut<f32>>, dbeta: Option<&mut CudaViewMut<f32>>, dout: &CudaView<f32>, inp: &CudaView<f32>, mean: &CudaView<f32>, rstd: &CudaView<f32>, gamma: Option<&CudaView<f32>>, shape: &BatchNormShape) -> Result<()> {
    backward(stream, dinp, None, dgamma, dbeta, dout, None, inp, mean, rstd, gamma, shape)
}

/// Backward of [`batchnorm_relu_forward_train`]: `dout` masked by `out > 0` (`out` the forward's output).
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_relu_backward(stream: &Arc<CudaStream>, dinp: &mut CudaViewMut<f32>, dgamma: Option<&mut CudaViewMut<f32>>, dbeta: Option<&mut CudaViewMut<f32>>, dout: &CudaView<f32>, out: &CudaView<f32>, inp: &CudaView<f32>, mean: &CudaView<f32>, rstd: &CudaView<f32>, gamma: Option<&CudaView<f32>>, shape: &BatchNormShape) -> Result<()> {
    backward(stream, dinp, None, dgamma, dbeta, dout, Some(out), inp, mean, rstd, gamma, shape)
}

/// Backward of [`batchnorm_add_relu_forward_train`]: `didentity += dy` with `dy = dout·(out > 0)`, and the
/// batch-norm backward of `dy`.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_add_relu_backward(stream: &Arc<CudaStream>, dinp: &mut CudaViewMut<f32>, didentity: &mut CudaViewMut<f32>, dgamma: Option<&mut CudaViewMut<f32>>, dbeta: Option<&mut CudaViewMut<f32>>, dout: &CudaView<f32>, out: &CudaView<f32>, inp: &CudaView<f32>, mean: &CudaView<f32>, rstd: &CudaView<f32>, gamma: Option<&CudaView<f32>>, shape: &BatchNormShape) -> Result<()> {
    backward(stream, dinp, Some(didentity), dgamma, dbeta, dout, Some(out), inp, mean, rstd, gamma, shape)
}
