//! Batch normalisation on wgpu (`shaders/norm.wgsl`), the same operations as
//! [`crate::backend::cpu::nn::norm`]: training-mode forward (statistics per (group, channel) with two-pass
//! workgroup reductions, running-statistic update), eval-mode forward, fused ReLU and residual add + ReLU
//! epilogues, and backward (accumulating into `dinp`, `dgamma`, `dbeta`, `didentity`).
//!
//! Buffers are f32 storage buffers of at least the element counts of [`BatchNormShape`]: `inp, out: [N, C, HW]`,
//! `mean, rstd: [G, C]`, `running_mean, running_var, gamma, beta: [C]`. `None` for `gamma`/`beta` is affine = false.

use super::context::{grid_2d, submit, AsGpuSlice, Dispatch, GpuSlice, WgpuContext};
use crate::backend::cpu::nn::BatchNormShape;
use crate::backend::plan::NormParams;
use crate::error::{Error, Result};

const SOURCE: &str = include_str!("../../../shaders/norm.wgsl");

const FLAG_GAMMA: u32 = 1;
const FLAG_BETA: u32 = 2;
const FLAG_RELU: u32 = 4;
const FLAG_ADD: u32 = 8;
const FLAG_EVAL: u32 = 16;
const FLAG_DGAMMA: u32 = 32;
const FLAG_DBETA: u32 = 64;

/// What follows the normalisation in a fused forward (and is undone in backward).
#[derive(Clone, Copy)]
enum Epilogue<'a> {
    None,
    Relu,
    AddRelu(GpuSlice<'a>),
}

impl Epilogue<'_> {
    fn flags(&self) -> u32 {
        match self {
            Epilogue::None => 0,
            Epilogue::Relu => FLAG_RELU,
            Epilogue::AddRelu(_) => FLAG_RELU | FLAG_ADD,
        }
    }
}

const OP: &str = "batchnorm (wgpu)";

fn check_f32(what: &str, buf: GpuSlice<'_>, elems: usize) -> Result<()> {
    if buf.size() < (elems * 4) as u64 {
        return Err(Error::shape(OP, format!("{what} buffer of at least {} bytes ({elems} f32)", elems * 4), format!("{} bytes", buf.size())));
    }
    Ok(())
}

fn check_opt(what: &str, buf: Option<GpuSlice<'_>>, elems: usize) -> Result<()> {
    buf.map_or(Ok(()), |b| check_f32(what, b, elems))
}

/// Grid of one workgroup per (group, channel) statistic, or an error when there are too many.
fn stat_grid(s: &BatchNormShape) -> Result<(u32, u32, u32)> {
    let gcn = s.stats_len();
    if gcn > 65535 * 65535 {
        return Err(Error::shape(OP, "G*C <= 65535^2", format!("G*C = {gcn}")));
    }
    Ok(grid_2d(gcn as u32))
}

fn elem_grid(len: usize) -> (u32, u32, u32) {
    grid_2d((len as u32).div_ceil(256))
}

fn params(s: &BatchNormShape, flags: u32) -> NormParams {
    NormParams { n: s.n as u32, c: s.c as u32, hw: s.hw as u32, groups: s.groups as u32, count: s.count() as u32, len: s.len() as u32, flags, _pad: 0, eps: s.eps, momentum: s.momentum, _pad2: [0.0; 2] }
}

fn affine_flags(gamma: Option<GpuSlice<'_>>, beta: Option<GpuSlice<'_>>) -> u32 {
    (if gamma.is_some() { FLAG_GAMMA } else { 0 }) | (if beta.is_some() { FLAG_BETA } else { 0 })
}

/// Submits owned parameter blocks with their dispatches.
pub(super) fn run(ctx: &WgpuContext, steps: Vec<(Vec<u8>, Dispatch)>) {
    let (ps, ds): (Vec<Vec<u8>>, Vec<Dispatch>) = steps.into_iter().unzip();
    let refs: Vec<(&[u8], Dispatch)> = ps.iter().map(|p| &p[..]).zip(ds).collect();
    submit(ctx, &refs);
}

fn dummy(ctx: &WgpuContext) -> wgpu::Buffer {
    ctx.storage_buffer("moco bn dummy", 16)
}

#[allow(clippy::too_many_arguments)]
fn apply<'a>(ctx: &WgpuContext, out: GpuSlice<'a>, inp: GpuSlice<'a>, mean: GpuSlice<'a>, rstd: GpuSlice<'a>, gamma: GpuSlice<'a>, beta: GpuSlice<'a>, identity: GpuSlice<'a>, s: &BatchNormShape, flags: u32) -> (Vec<u8>, Dispatch<'a>) {
    let p = params(s, flags);
    (
        bytemuck::bytes_of(&p).to_vec(),
        Dispatch { pipeline: ctx.pipeline("norm", SOURCE, "bn_apply", None), buffers: vec![(1, inp), (2, out), (3, mean), (4, rstd), (8, gamma), (9, beta), (10, identity)], grid: elem_grid(s.len()) },
    )
}

#[allow(clippy::too_many_arguments)]
fn forward_train(ctx: &WgpuContext, out: GpuSlice<'_>, mean: GpuSlice<'_>, rstd: GpuSlice<'_>, running_mean: GpuSlice<'_>, running_var: GpuSlice<'_>, inp: GpuSlice<'_>, gamma: Option<GpuSlice<'_>>, beta: Option<GpuSlice<'_>>, epi: Epilogue, s: &BatchNormShape) -> Result<()> {
    check_f32("inp [N*C*HW]", inp, s.len())?;
    check_f32("out [N*C*HW]", out, s.len())?;
    check_f32("mean [G*C]", mean, s.stats_len())?;
    check_f32("rstd [G*C]", rstd, s.stats_len())?;
    check_f32("running_mean [C]", running_mean, s.c)?;
    check_f32("running_var [C]", running_var, s.c)?;
    check_opt("gamma [C]", gamma, s.c)?;
    check_opt("beta [C]", beta, s.c)?;
    if let Epilogue::AddRelu(id) = epi {
        check_f32("identity [N*C*HW]", id, s.len())?;
    }
    if s.count() < 2 {
        return Err(Error::shape(OP, "more than one value per channel and group in training mode ((N/G)*HW >= 2)", format!("N = {}, G = {}, HW = {}", s.n, s.groups, s.hw)));
    }
    let grid = stat_grid(s)?;
    ctx.scoped(|| {
        let var_gc = ctx.storage_buffer("moco bn var", (s.stats_len() * 4) as u64);
        let (dg, db, di) = (dummy(ctx), dummy(ctx), dummy(ctx));
        let flags = affine_flags(gamma, beta) | epi.flags();
        let p = bytemuck::bytes_of(&params(s, flags)).to_vec();
        let id = match epi {
            Epilogue::AddRelu(id) => id,
            _ => GpuSlice::from(&di),
        };
        let steps = vec![
            (p.clone(), Dispatch { pipeline: ctx.pipeline("norm", SOURCE, "bn_stats", None), buffers: vec![(1, inp), (3, mean), (4, rstd), (5, GpuSlice::from(&var_gc))], grid }),
            (p.clone(), Dispatch { pipeline: ctx.pipeline("norm", SOURCE, "bn_running", None), buffers: vec![(3, mean), (5, GpuSlice::from(&var_gc)), (6, running_mean), (7, running_var)], grid: ((s.c as u32).div_ceil(64), 1, 1) }),
            apply(ctx, out, inp, mean, rstd, gamma.unwrap_or(GpuSlice::from(&dg)), beta.unwrap_or(GpuSlice::from(&db)), id, s, flags),
        ];
        run(ctx, steps);
        Ok(())
    })
}

#[allow(clippy::too_many_arguments)]
fn forward_eval(ctx: &WgpuContext, out: GpuSlice<'_>, inp: GpuSlice<'_>, running_mean: GpuSlice<'_>, running_var: GpuSlice<'_>, gamma: Option<GpuSlice<'_>>, beta: Option<GpuSlice<'_>>, epi: Epilogue, s: &BatchNormShape) -> Result<()> {
    check_f32("inp [N*C*HW]", inp, s.len())?;
    check_f32("out [N*C*HW]", out, s.len())?;
    check_f32("running_mean [C]", running_mean, s.c)?;
    check_f32("running_var [C]", running_var, s.c)?;
    check_opt("gamma [C]", gamma, s.c)?;
    check_opt("beta [C]", beta, s.c)?;
    if let Epilogue::AddRelu(id) = epi {
        check_f32("identity [N*C*HW]", id, s.len())?;
    }
    ctx.scoped(|| {
        let (dg, db, di) = (dummy(ctx), dummy(ctx), dummy(ctx));
        let id = match epi {
            Epilogue::AddRelu(id) => id,
            _ => GpuSlice::from(&di),
        };
        let flags = affine_flags(gamma, beta) | epi.flags() | FLAG_EVAL;
        run(ctx, vec![apply(ctx, out, inp, running_mean, running_var, gamma.unwrap_or(GpuSlice::from(&dg)), beta.unwrap_or(GpuSlice::from(&db)), id, s, flags)]);
        Ok(())
    })
}

#[allow(clippy::too_many_arguments)]
fn backward(ctx: &WgpuContext, dinp: GpuSlice<'_>, didentity: Option<GpuSlice<'_>>, dgamma: Option<GpuSlice<'_>>, dbeta: Option<GpuSlice<'_>>, dout: GpuSlice<'_>, out: Option<GpuSlice<'_>>, inp: GpuSlice<'_>, mean: GpuSlice<'_>, rstd: GpuSlice<'_>, gamma: Option<GpuSlice<'_>>, s: &BatchNormShape) -> Result<()> {
    check_f32("dinp [N*C*HW]", dinp, s.len())?;
    check_f32("dout [N*C*HW]", dout, s.len())?;
    check_f32("inp [N*C*HW]", inp, s.len())?;
    check_opt("out [N*C*HW]", out, s.len())?;
    check_opt("didentity [N*C*HW]", didentity, s.len())?;
    check_f32("mean [G*C]", mean, s.stats_len())?;
    check_f32("rstd [G*C]", rstd, s.stats_len())?;
    check_opt("gamma [C]", gamma, s.c)?;
    check_opt("dgamma [C]", dgamma, s.c)?;
    check_opt("dbeta [C]", dbeta, s.c)?;
    let grid = stat_grid(s)?;
    ctx.scoped(|| {
        let sums = ctx.storage_buffer("moco bn sums", (s.stats_len() * 2 * 4) as u64);
        let coef = ctx.storage_buffer("moco bn coef", (s.stats_len() * 3 * 4) as u64);
        let (d_y, d_g, d_dg, d_db, d_di) = (dummy(ctx), dummy(ctx), dummy(ctx), dummy(ctx), dummy(ctx));
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
        let p = bytemuck::bytes_of(&params(s, flags)).to_vec();
        let y = out.unwrap_or(GpuSlice::from(&d_y));
        run(
            ctx,
            vec![
                (p.clone(), Dispatch { pipeline: ctx.pipeline("norm", SOURCE, "bn_backward_sums", None), buffers: vec![(1, inp), (11, dout), (12, y), (13, GpuSlice::from(&sums)), (19, mean), (20, rstd)], grid }),
                (
                    p.clone(),
                    Dispatch {
                        pipeline: ctx.pipeline("norm", SOURCE, "bn_backward_coef", None),
                        buffers: vec![(8, gamma.unwrap_or(GpuSlice::from(&d_g))), (13, GpuSlice::from(&sums)), (14, GpuSlice::from(&coef)), (17, dgamma.unwrap_or(GpuSlice::from(&d_dg))), (18, dbeta.unwrap_or(GpuSlice::from(&d_db))), (20, rstd)],
                        grid: ((s.c as u32).div_ceil(64), 1, 1),
                    },
                ),
                (
                    p,
                    Dispatch {
                        pipeline: ctx.pipeline("norm", SOURCE, "bn_backward_dx", None),
                        buffers: vec![(1, inp), (11, dout), (12, y), (14, GpuSlice::from(&coef)), (15, dinp), (16, didentity.unwrap_or(GpuSlice::from(&d_di))), (19, mean)],
                        grid: elem_grid(s.len()),
                    },
                ),
            ],
        );
        Ok(())
    })
}

/// Batch norm forward, training mode (see [`crate::backend::cpu::nn::batchnorm_forward_train`]): writes `out`,
/// `mean, rstd: [G, C]` and updates `running_mean, running_var: [C]`.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_forward_train(ctx: &WgpuContext, out: &dyn AsGpuSlice, mean: &dyn AsGpuSlice, rstd: &dyn AsGpuSlice, running_mean: &dyn AsGpuSlice, running_var: &dyn AsGpuSlice, inp: &dyn AsGpuSlice, gamma: Option<&dyn AsGpuSlice>, beta: Option<&dyn AsGpuSlice>, shape: &BatchNormShape) -> Result<()> {
    forward_train(ctx, out.as_gpu_slice(), mean.as_gpu_slice(), rstd.as_gpu_slice(), running_mean.as_gpu_slice(), running_var.as_gpu_slice(), inp.as_gpu_slice(), gamma.map(|b| b.as_gpu_slice()), beta.map(|b| b.as_gpu_slice()), Epilogue::None, shape)
}

/// [`batchnorm_forward_train`] followed by ReLU.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_relu_forward_train(ctx: &WgpuContext, out: &dyn AsGpuSlice, mean: &dyn AsGpuSlice, rstd: &dyn AsGpuSlice, running_mean: &dyn AsGpuSlice, running_var: &dyn AsGpuSlice, inp: &dyn AsGpuSlice, gamma: Option<&dyn AsGpuSlice>, beta: Option<&dyn AsGpuSlice>, shape: &BatchNormShape) -> Result<()> {
    forward_train(ctx, out.as_gpu_slice(), mean.as_gpu_slice(), rstd.as_gpu_slice(), running_mean.as_gpu_slice(), running_var.as_gpu_slice(), inp.as_gpu_slice(), gamma.map(|b| b.as_gpu_slice()), beta.map(|b| b.as_gpu_slice()), Epilogue::Relu, shape)
}

/// [`batchnorm_forward_train`] followed by a residual add and ReLU: `out = relu(bn(inp) + identity)`.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_add_relu_forward_train(ctx: &WgpuContext, out: &dyn AsGpuSlice, mean: &dyn AsGpuSlice, rstd: &dyn AsGpuSlice, running_mean: &dyn AsGpuSlice, running_var: &dyn AsGpuSlice, inp: &dyn AsGpuSlice, identity: &dyn AsGpuSlice, gamma: Option<&dyn AsGpuSlice>, beta: Option<&dyn AsGpuSlice>, shape: &BatchNormShape) -> Result<()> {
    forward_train(ctx, out.as_gpu_slice(), mean.as_gpu_slice(), rstd.as_gpu_slice(), running_mean.as_gpu_slice(), running_var.as_gpu_slice(), inp.as_gpu_slice(), gamma.map(|b| b.as_gpu_slice()), beta.map(|b| b.as_gpu_slice()), Epilogue::AddRelu(identity.as_gpu_slice()), shape)
}

/// Batch norm forward, eval mode (running statistics; groups play no role).
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_forward_eval(ctx: &WgpuContext, out: &dyn AsGpuSlice, inp: &dyn AsGpuSlice, running_mean: &dyn AsGpuSlice, running_var: &dyn AsGpuSlice, gamma: Option<&dyn AsGpuSlice>, beta: Option<&dyn AsGpuSlice>, shape: &BatchNormShape) -> Result<()> {
    forward_eval(ctx, out.as_gpu_slice(), inp.as_gpu_slice(), running_mean.as_gpu_slice(), running_var.as_gpu_slice(), gamma.map(|b| b.as_gpu_slice()), beta.map(|b| b.as_gpu_slice()), Epilogue::None, shape)
}

/// [`batchnorm_forward_eval`] followed by ReLU.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_relu_forward_eval(ctx: &WgpuContext, out: &dyn AsGpuSlice, inp: &dyn AsGpuSlice, running_mean: &dyn AsGpuSlice, running_var: &dyn AsGpuSlice, gamma: Option<&dyn AsGpuSlice>, beta: Option<&dyn AsGpuSlice>, shape: &BatchNormShape) -> Result<()> {
    forward_eval(ctx, out.as_gpu_slice(), inp.as_gpu_slice(), running_mean.as_gpu_slice(), running_var.as_gpu_slice(), gamma.map(|b| b.as_gpu_slice()), beta.map(|b| b.as_gpu_slice()), Epilogue::Relu, shape)
}

/// [`batchnorm_forward_eval`] followed by a residual add and ReLU.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_add_relu_forward_eval(ctx: &WgpuContext, out: &dyn AsGpuSlice, inp: &dyn AsGpuSlice, identity: &dyn AsGpuSlice, running_mean: &dyn AsGpuSlice, running_var: &dyn AsGpuSlice, gamma: Option<&dyn AsGpuSlice>, beta: Option<&dyn AsGpuSlice>, shape: &BatchNormShape) -> Result<()> {
    forward_eval(ctx, out.as_gpu_slice(), inp.as_gpu_slice(), running_mean.as_gpu_slice(), running_var.as_gpu_slice(), gamma.map(|b| b.as_gpu_slice()), beta.map(|b| b.as_gpu_slice()), Epilogue::AddRelu(identity.as_gpu_slice()), shape)
}

/// Backward of [`batchnorm_forward_train`]: `dinp += ...`, `dgamma += Σ dout·x̂`, `dbeta += Σ dout` (`None` skips).
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward(ctx: &WgpuContext, dinp: &dyn AsGpuSlice, dgamma: Option<&dyn AsGpuSlice>, dbeta: Option<&dyn AsGpuSlice>, dout: &dyn AsGpuSlice, inp: &dyn AsGpuSlice, mean: &dyn AsGpuSlice, rstd: &dyn AsGpuSlice, gamma: Option<&dyn AsGpuSlice>, shape: &BatchNormShape) -> Result<()> {
    backward(ctx, dinp.as_gpu_slice(), None, dgamma.map(|b| b.as_gpu_slice()), dbeta.map(|b| b.as_gpu_slice()), dout.as_gpu_slice(), None, inp.as_gpu_slice(), mean.as_gpu_slice(), rstd.as_gpu_slice(), gamma.map(|b| b.as_gpu_slice()), shape)
}

/// Backward of [`batchnorm_relu_forward_train`]: `dout` masked by `out > 0` (`out` the forward's output).
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_relu_backward(ctx: &WgpuContext, dinp: &dyn AsGpuSlice, dgamma: Option<&dyn AsGpuSlice>, dbeta: Option<&dyn AsGpuSlice>, dout: &dyn AsGpuSlice, out: &dyn AsGpuSlice, inp: &dyn AsGpuSlice, mean: &dyn AsGpuSlice, rstd: &dyn AsGpuSlice, gamma: Option<&dyn AsGpuSlice>, shape: &BatchNormShape) -> Result<()> {
    backward(ctx, dinp.as_gpu_slice(), None, dgamma.map(|b| b.as_gpu_slice()), dbeta.map(|b| b.as_gpu_slice()), dout.as_gpu_slice(), Some(out.as_gpu_slice()), inp.as_gpu_slice(), mean.as_gpu_slice(), rstd.as_gpu_slice(), gamma.map(|b| b.as_gpu_slice()), shape)
}

/// Backward of [`batchnorm_add_relu_forward_train`]: `didentity += dy` with `dy = dout·(out > 0)`, and the
/// batch-norm backward of `dy`.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_add_relu_backward(ctx: &WgpuContext, dinp: &dyn AsGpuSlice, didentity: &dyn AsGpuSlice, dgamma: Option<&dyn AsGpuSlice>, dbeta: Option<&dyn AsGpuSlice>, dout: &dyn AsGpuSlice, out: &dyn AsGpuSlice, inp: &dyn AsGpuSlice, mean: &dyn AsGpuSlice, rstd: &dyn AsGpuSlice, gamma: Option<&dyn AsGpuSlice>, shape: &BatchNormShape) -> Result<()> {
    backward(ctx, dinp.as_gpu_slice(), Some(didentity.as_gpu_slice()), dgamma.map(|b| b.as_gpu_slice()), dbeta.map(|b| b.as_gpu_slice()), dout.as_gpu_slice(), Some(out.as_gpu_slice()), inp.as_gpu_slice(), mean.as_gpu_slice(), rstd.as_gpu_slice(), gamma.map(|b| b.as_gpu_slice()), shape)
}
