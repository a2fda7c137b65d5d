//! Pooling, linear and element-wise layers on wgpu (`shaders/pool.wgsl`), the same operations as
//! [`crate::backend::cpu::nn::pool`], [`crate::backend::cpu::nn::linear`] and [`crate::backend::cpu::nn::act`].
//! Buffers are f32 storage buffers (`argmax`: u32) of at least the element counts of the shape types; backward
//! functions accumulate.

use super::context::{grid_2d, AsGpuSlice, Dispatch, WgpuContext};
use super::norm::run;
use crate::backend::cpu::nn::{EltwiseShape, GlobalAvgPoolShape, LinearShape, MaxPool2dShape};
use crate::backend::plan::PoolParams;
use crate::error::{Error, Result};

const SOURCE: &str = include_str!("../../../shaders/pool.wgsl");
const FLAG_ACC: u32 = 1;
const FLAG_BIAS: u32 = 2;
const TILE: usize = 16;

pub(super) fn check_bytes(op: &'static str, what: &str, buf: &dyn AsGpuSlice, elems: usize) -> Result<()> {
    let size = buf.as_gpu_slice().size();
    if size < (elems * 4) as u64 {
        return Err(Error::shape(op, format!("{what} buffer of at least {} bytes ({elems} elements)", elems * 4), format!("{size} bytes")));
    }
    Ok(())
}

fn elem_grid(len: usize) -> (u32, u32, u32) {
    grid_2d((len as u32).div_ceil(256))
}

fn one(ctx: &WgpuContext, entry: &'static str, p: &PoolParams, buffers: Vec<(u32, &dyn AsGpuSlice)>, grid: (u32, u32, u32)) -> Result<()> {
    ctx.scoped(|| {
        run(ctx, vec![(bytemuck::bytes_of(p).to_vec(), Dispatch { pipeline: ctx.pipeline("pool", SOURCE, entry, None), buffers: buffers.iter().map(|(b, x)| (*b, x.as_gpu_slice())).collect(), grid })]);
        Ok(())
    })
}

fn maxpool_params(s: &MaxPool2dShape) -> PoolParams {
    PoolParams { planes: (s.n * s.c) as u32, h: s.h as u32, w: s.w as u32, oh: s.out_h() as u32, ow: s.out_w() as u32, k: s.k as u32, stride: s.stride as u32, pad: s.pad as u32, ..Default::default() }
}

/// Max pooling forward: `out, argmax: [N, C, OH, OW]` (argmax: index `ih*W + iw` inside the plane, first maximum
/// in scan order) from `inp: [N, C, H, W]`.
pub fn maxpool2d_forward(ctx: &WgpuContext, out: &dyn AsGpuSlice, argmax: &dyn AsGpuSlice, inp: &dyn AsGpuSlice, shape: &MaxPool2dShape) -> Result<()> {
    let op = "maxpool2d (wgpu)";
    check_bytes(op, "inp [N*C*H*W]", inp, shape.inp_len())?;
    check_bytes(op, "out [N*C*OH*OW]", out, shape.out_len())?;
    check_bytes(op, "argmax [N*C*OH*OW]", argmax, shape.out_len())?;
    one(ctx, "maxpool_forward", &maxpool_params(shape), vec![(1, inp), (2, out), (3, argmax)], elem_grid(shape.out_len()))
}

/// Max pooling backward: `dinp [N, C, H, W] += dout` at the saved `argmax` positions, gathered per input pixel
/// (deterministic, no atomics). Indices that lie outside their window are ignored.
pub fn maxpool2d_backward(ctx: &WgpuContext, dinp: &dyn AsGpuSlice, dout: &dyn AsGpuSlice, argmax: &dyn AsGpuSlice, shape: &MaxPool2dShape) -> Result<()> {
    let op = "maxpool2d (wgpu)";
    check_bytes(op, "dinp [N*C*H*W]", dinp, shape.inp_len())?;
    check_bytes(op, "dout [N*C*OH*OW]", dout, shape.out_len())?;
    check_bytes(op, "argmax [N*C*OH*OW]", argmax, shape.out_len())?;
    one(ctx, "maxpool_backward", &maxpool_params(shape), vec![(4, argmax), (5, dout), (6, dinp)], elem_grid(shape.inp_len()))
}

/// Global average pooling forward: `out [N, C] = mean over HW of inp [N, C, HW]`.
pub fn global_avgpool_forward(ctx: &WgpuContext, out: &dyn AsGpuSlice, inp: &dyn AsGpuSlice, shape: &GlobalAvgPoolShape) -> Result<()> {
    let op = "global_avgpool (wgpu)";
    check_bytes(op, "inp [N*C*HW]", inp, shape.n * shape.c * shape.hw)?;
    check_bytes(op, "out [N*C]", out, shape.n * shape.c)?;
    let p = PoolParams { planes: (shape.n * shape.c) as u32, hw: shape.hw as u32, inv_hw: 1.0 / shape.hw as f32, ..Default::default() };
    one(ctx, "avgpool_forward", &p, vec![(1, inp), (2, out)], elem_grid(shape.n * shape.c))
}

/// Global average pooling backward: `dinp [N, C, HW] += dout [N, C] / HW`.
pub fn global_avgpool_backward(ctx: &WgpuContext, dinp: &dyn AsGpuSlice, dout: &dyn AsGpuSlice, shape: &GlobalAvgPoolShape) -> Result<()> {
    let op = "global_avgpool (wgpu)";
    check_bytes(op, "dinp [N*C*HW]", dinp, shape.n * shape.c * shape.hw)?;
    check_bytes(op, "dout [N*C]", dout, shape.n * shape.c)?;
    let p = PoolParams { planes: (shape.n * shape.c) as u32, hw: shape.hw as u32, inv_hw: 1.0 / shape.hw as f32, ..Default::default() };
    one(ctx, "avgpool_backward", &p, vec![(5, dout), (6, dinp)], elem_grid(shape.n * shape.c * shape.hw))
}

/// One strided GEMM `C[m, nc] (+)= A·B (+ bias)` (see `gemm` in the shader).
#[allow(clippy::too_many_arguments)]
fn gemm(ctx: &WgpuContext, c: &dyn AsGpuSlice, a: &dyn AsGpuSlice, (a_rs, a_cs): (usize, usize), b: &dyn AsGpuSlice, (b_rs, b_cs): (usize, usize), bias: Option<&dyn AsGpuSlice>, (m, nc, kk): (usize, usize, usize), acc: bool) -> Result<()> {
    let (gx, gy) = (nc.div_ceil(TILE), m.div_ceil(TILE));
    if gx > 65535 || gy > 65535 {
        return Err(Error::shape("linear (wgpu)", "at most 65535*16 rows and output columns per GEMM", format!("{m} x {nc}")));
    }
    let flags = if acc { FLAG_ACC } else { 0 } | if bias.is_some() { FLAG_BIAS } else { 0 };
    let p = PoolParams { m: m as u32, nc: nc as u32, kk: kk as u32, flags, a_rs: a_rs as u32, a_cs: a_cs as u32, b_rs: b_rs as u32, b_cs: b_cs as u32, ..Default::default() };
    let dummy = ctx.storage_buffer("moco gemm dummy bias", 16);
    one(ctx, "gemm", &p, vec![(7, a), (8, b), (9, c), (10, bias.unwrap_or(&dummy as &dyn AsGpuSlice))], (gx as u32, gy as u32, 1))
}

/// Linear forward: `out [N, OUT] = inp [N, IN] · weight [OUT, IN]ᵀ (+ bias [OUT])` (overwrites `out`).
pub fn linear_forward(ctx: &WgpuContext, out: &dyn AsGpuSlice, inp: &dyn AsGpuSlice, weight: &dyn AsGpuSlice, bias: Option<&dyn AsGpuSlice>, shape: &LinearShape) -> Result<()> {
    let (op, s) = ("linear (wgpu)", *shape);
    check_bytes(op, "inp [N*IN]", inp, s.n * s.in_f)?;
    check_bytes(op, "weight [OUT*IN]", weight, s.out_f * s.in_f)?;
    check_bytes(op, "out [N*OUT]", out, s.n * s.out_f)?;
    if let Some(b) = bias {
        check_bytes(op, "bias [OUT]", b, s.out_f)?;
    }
    // A = inp (r, i) at r*IN + i; B (i, o) = weight[o*IN + i]
    gemm(ctx, out, inp, (s.in_f, 1), weight, (1, s.in_f), bias, (s.n, s.out_f, s.in_f), false)
}

/// Linear backward: `dinp [N, IN] += dout · weight` (skipped when `None`), `dweight [OUT, IN] += doutᵀ · inp`,
/// `dbias [OUT] += Σ_n dout` (skipped when `None`). `dout: [N, OUT]`.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(ctx: &WgpuContext, dinp: Option<&dyn AsGpuSlice>, dweight: &dyn AsGpuSlice, dbias: Option<&dyn AsGpuSlice>, dout: &dyn AsGpuSlice, inp: &dyn AsGpuSlice, weight: &dyn AsGpuSlice, shape: &LinearShape) -> Result<()> {
    let (op, s) = ("linear (wgpu)", *shape);
    check_bytes(op, "inp [N*IN]", inp, s.n * s.in_f)?;
    check_bytes(op, "weight [OUT*IN]", weight, s.out_f * s.in_f)?;
    check_bytes(op, "dout [N*OUT]", dout, s.n * s.out_f)?;
    check_bytes(op, "dweight [OUT*IN]", dweight, s.out_f * s.in_f)?;
    if let Some(d) = dinp {
        check_bytes(op, "dinp [N*IN]", d, s.n * s.in_f)?;
    }
    if let Some(d) = dbias {
        check_bytes(op, "dbias [OUT]", d, s.out_f)?;
    }
    if s.out_f.div_ceil(TILE) > 65535 || s.n.div_ceil(TILE) > 65535 || s.in_f.div_ceil(TILE) > 65535 {
        return Err(Error::shape(op, "N, IN, OUT <= 65535*16", format!("N = {}, IN = {}, OUT = {}", s.n, s.in_f, s.out_f)));
    }
    if let Some(dx) = dinp {
        // A = dout (r, o) at r*OUT + o; B (o, i) = weight[o*IN + i]
        gemm(ctx, dx, dout, (s.out_f, 1), weight, (s.in_f, 1), None, (s.n, s.in_f, s.out_f), true)?;
    }
    // A (o, r) = dout[r*OUT + o]; B (r, i) = inp[r*IN + i]
    gemm(ctx, dweight, dout, (1, s.out_f), inp, (s.in_f, 1), None, (s.out_f, s.in_f, s.n), true)?;
    if let Some(db) = dbias {
        let p = PoolParams { m: s.n as u32, nc: s.out_f as u32, ..Default::default() };
        one(ctx, "bias_backward", &p, vec![(5, dout), (6, db)], elem_grid(s.out_f))?;
    }
    Ok(())
}

fn elt(op: &'static str, s: &EltwiseShape, bufs: &[(&str, &dyn AsGpuSlice)]) -> Result<PoolParams> {
    for (what, b) in bufs {
        check_bytes(op, what, *b, s.len)?;
    }
    Ok(PoolParams { len: s.len as u32, ..Default::default() })
}

/// ReLU forward: `out = max(inp, 0)`.
pub fn relu_forward(ctx: &WgpuContext, out: &dyn AsGpuSlice, inp: &dyn AsGpuSlice, shape: &EltwiseShape) -> Result<()> {
    let p = elt("relu (wgpu)", shape, &[("out", out), ("inp", inp)])?;
    one(ctx, "relu_forward", &p, vec![(1, inp), (2, out)], elem_grid(shape.len))
}

/// ReLU backward: `dinp += dout · (out > 0)`, `out` the forward's output.
pub fn relu_backward(ctx: &WgpuContext, dinp: &dyn AsGpuSlice, dout: &dyn AsGpuSlice, out: &dyn AsGpuSlice, shape: &EltwiseShape) -> Result<()> {
    let p = elt("relu (wgpu)", shape, &[("dinp", dinp), ("dout", dout), ("out", out)])?;
    one(ctx, "relu_backward", &p, vec![(1, out), (5, dout), (6, dinp)], elem_grid(shape.len))
}

/// Residual add forward: `out = a + b`.
pub fn add_forward(ctx: &WgpuContext, out: &dyn AsGpuSlice, a: &dyn AsGpuSlice, b: &dyn AsGpuSlice, shape: &EltwiseShape) -> Result<()> {
    let p = elt("add (wgpu)", shape, &[("out", out), ("a", a), ("b", b)])?;
    one(ctx, "add_forward", &p, vec![(1, a), (2, out), (5, b)], elem_grid(shape.len))
}
