//! Pooling, linear and element-wise layers on CUDA (`kernels/pool.cu`), the same operations, validation and
//! launches as [`crate::backend::wgpu::pool`]: [`crate::backend::cpu::nn::pool`], [`crate::backend::cpu::nn::linear`]
//! and [`crate::backend::cpu::nn::act`]. Buffers are cudarc views (see [`super::conv`]) of at least the element
//! counts of the shape types (`argmax`: u32); backward functions accumulate. Every function runs asynchronously
//! on `stream`.

use super::conv::check_f32 as check_len;
use super::context::{cfg, function};
use super::norm::{push_opt, push_opt_mut};
use crate::backend::cpu::nn::{EltwiseShape, GlobalAvgPoolShape, LinearShape, MaxPool2dShape};
use crate::backend::plan::{elem_grid, GemmLaunch, PoolParams};
use crate::error::{Error, Result};
use cudarc::driver::{CudaStream, CudaView, CudaViewMut, DeviceRepr, LaunchConfig, PushKernelArg};
use std::sync::Arc;

const FILE: &str = "pool.cu";
/// GEMM tile: `gemm` runs (16, 16) blocks, one output per thread.
const TILE: usize = crate::backend::plan::GEMM_TILE;

// SAFETY: #[repr(C)] plain-old-data (eighteen u32, one f32, one u32), the layout of `struct Params` in
// kernels/pool.cu.
unsafe impl DeviceRepr for PoolParams {}
const _: () = assert!(std::mem::size_of::<PoolParams>() == 80 && std::mem::align_of::<PoolParams>() == 4);
const _: () = assert!(std::mem::offset_of!(PoolParams, m) == 32 && std::mem::offset_of!(PoolParams, len) == 64 && std::mem::offset_of!(PoolParams, inv_hw) == 72);

/// Launches a kernel of `pool.cu` taking `(Params, <views>)` with 256-thread blocks over `grid`.
macro_rules! launch {
    ($stream:expr, $name:expr, $p:expr, $grid:expr $(, $buf:expr)*) => {{
        let f = function($stream, FILE, $name)?;
        let p: PoolParams = $p;
        let mut b = $stream.launch_builder(&f);
        b.arg(&p);
        $(b.arg($buf);)*
        // SAFETY: at each use, the SAFETY comment before the macro gives the kernel signature the arguments
        // follow (in order) and why every access is in bounds.
        unsafe { b.launch(cfg($grid)) }?;
    }};
}

fn maxpool_params(s: &MaxPool2dShape) -> PoolParams {
    PoolParams::maxpool(s)
}

/// Re-validates a shape (its fields are public; `pad <= k/2` keeps every window inside the plane). The output,
/// which can be a little larger than the input (k = 2, pad = 1), must also fit the kernels' u32 indexing.
fn maxpool_revalidate(s: &MaxPool2dShape) -> Result<MaxPool2dShape> {
    let v = MaxPool2dShape::new(s.n, s.c, s.h, s.w, s.k, s.stride, s.pad)?;
    if v.out_len() > i32::MAX as usize {
        return Err(Error::shape("maxpool2d (cuda)", "N*C*OH*OW at most i32::MAX", format!("{v:?}")));
    }
    Ok(v)
}

/// Max pooling forward: `out, argmax: [N, C, OH, OW]` (argmax: index `ih*W + iw` inside the plane, first maximum
/// in scan order) from `inp: [N, C, H, W]`. Launches `maxpool_forward`, one thread per output element.
pub fn maxpool2d_forward(stream: &Arc<CudaStream>, out: &mut CudaViewMut<f32>, argmax: &mut CudaViewMut<u32>, inp: &CudaView<f32>, shape: &MaxPool2dShape) -> Result<()> {
    let op = "maxpool2d (cuda)";
    let s = maxpool_revalidate(shape)?;
    check_len(op, "inp [N*C*H*W]", inp.len(), s.inp_len())?;
    check_len(op, "out [N*C*OH*OW]", out.len(), s.out_len())?;
    check_len(op, "argmax [N*C*OH*OW]", argmax.len(), s.out_len())?;
    // SAFETY: maxpool_forward(Params, const float* x [N*C*H*W], float* yout [N*C*OH*OW], unsigned* argmax [N*C*OH*OW]);
    // thread o < N*C*OH*OW reads its window (inside its plane, pad <= k/2) and writes index o.
    launch!(stream, "maxpool_forward", maxpool_params(&s), elem_grid(s.out_len()), inp, out, argmax);
    Ok(())
}

/// Max pooling backward: `dinp [N, C, H, W] += dout` at the saved `argmax` positions, gathered per input pixel
/// (deterministic, no atomics). Indices that lie outside their window are ignored. Launches `maxpool_backward`,
/// one thread per input element.
pub fn maxpool2d_backward(stream: &Arc<CudaStream>, dinp: &mut CudaViewMut<f32>, dout: &CudaView<f32>, argmax: &CudaView<u32>, shape: &MaxPool2dShape) -> Result<()> {
    let op = "maxpool2d (cuda)";
    let s = maxpool_revalidate(shape)?;
    check_len(op, "dinp [N*C*H*W]", dinp.len(), s.inp_len())?;
    check_len(op, "dout [N*C*OH*OW]", dout.len(), s.out_len())?;
    check_len(op, "argmax [N*C*OH*OW]", argmax.len(), s.out_len())?;
    // SAFETY: maxpool_backward(Params, const unsigned* argmax_in [N*C*OH*OW], const float* dy [N*C*OH*OW], float* dx
    // [N*C*H*W]); thread i < N*C*H*W reads the outputs (oy < OH, ox < OW) of its plane and updates index i.
    launch!(stream, "maxpool_backward", maxpool_params(&s), elem_grid(s.inp_len()), argmax, dout, dinp);
    Ok(())
}

fn avgpool_params(s: &GlobalAvgPoolShape) -> Result<PoolParams> {
    PoolParams::avgpool(s)
}

/// Global average pooling forward: `out [N, C] = mean over HW of inp [N, C, HW]`. Launches `avgpool_forward`,
/// one thread per plane.
pub fn global_avgpool_forward(stream: &Arc<CudaStream>, out: &mut CudaViewMut<f32>, inp: &CudaView<f32>, shape: &GlobalAvgPoolShape) -> Result<()> {
    let op = "global_avgpool (cuda)";
    let p = avgpool_params(shape)?;
    let s = *shape;
    check_len(op, "inp [N*C*HW]", inp.len(), s.n * s.c * s.hw)?;
    check_len(op, "out [N*C]", out.len(), s.n * s.c)?;
    // SAFETY: avgpool_forward(Params, const float* x [N*C*HW], float* yout [N*C]); thread p < N*C reads plane p.
    launch!(stream, "avgpool_forward", p, elem_grid(s.n * s.c), inp, out);
    Ok(())
}

/// Global average pooling backward: `dinp [N, C, HW] += dout [N, C] / HW`. Launches `avgpool_backward`, one
/// thread per input element.
pub fn global_avgpool_backward(stream: &Arc<CudaStream>, dinp: &mut CudaViewMut<f32>, dout: &CudaView<f32>, shape: &GlobalAvgPoolShape) -> Result<()> {
    let op = "global_avgpool (cuda)";
    let p = avgpool_params(shape)?;
    let s = *shape;
    check_len(op, "dinp [N*C*HW]", dinp.len(), s.n * s.c * s.hw)?;
    check_len(op, "dout [N*C]", dout.len(), s.n * s.c)?;
    // SAFETY: avgpool_backward(Params, const float* dy [N*C], float* dx [N*C*HW]); thread i < N*C*HW updates index i.
    launch!(stream, "avgpool_backward", p, elem_grid(s.n * s.c * s.hw), dout, dinp);
    Ok(())
}

/// One strided GEMM `C[m, nc] (+)= A·B (+ bias)` (`gemm` in the kernel file) as described by `g`
/// ([`GemmLaunch`]): A(r, k) at `r*a_rs + k*a_cs`, B(k, c) at `k*b_rs + c*b_cs`, C row-major. (16, 16) blocks,
/// one output each.
fn gemm(stream: &Arc<CudaStream>, c: &mut CudaViewMut<f32>, a: &CudaView<f32>, b: &CudaView<f32>, bias: Option<&CudaView<f32>>, g: GemmLaunch) -> Result<()> {
    debug_assert_eq!(bias.is_some(), g.params.flags & crate::backend::plan::GEMM_FLAG_BIAS != 0);
    let p = g.params;
    let f = function(stream, FILE, "gemm")?;
    let mut l = stream.launch_builder(&f);
    l.arg(&p).arg(a).arg(b).arg(c);
    push_opt(&mut l, bias);
    let grid = LaunchConfig { grid_dim: g.grid, block_dim: g.block, shared_mem_bytes: 0 };
    // SAFETY: gemm(Params, const float* ga, const float* gb, float* gc [m*nc], const float* bias [nc]); the callers
    // checked that A and B hold every strided element (r < m, k < kk, c < nc) the kernel reads (reads are guarded
    // by those bounds) and C m*nc elements; bias is null exactly when FLAG_BIAS is clear and read only under it;
    // thread (row < m, col < nc) writes C[row*nc + col] only; 256 threads per block as the kernel's launch bounds.
    unsafe { l.launch(grid) }?;
    Ok(())
}

/// Linear forward: `out [N, OUT] = inp [N, IN] · weight [OUT, IN]ᵀ (+ bias [OUT])` (overwrites `out`).
/// Launches `gemm` once.
pub fn linear_forward(stream: &Arc<CudaStream>, out: &mut CudaViewMut<f32>, inp: &CudaView<f32>, weight: &CudaView<f32>, bias: Option<&CudaView<f32>>, shape: &LinearShape) -> Result<()> {
    let op = "linear (cuda)";
    let s = LinearShape::new(shape.n, shape.in_f, shape.out_f)?;
    check_len(op, "inp [N*IN]", inp.len(), s.n * s.in_f)?;
    check_len(op, "weight [OUT*IN]", weight.len(), s.out_f * s.in_f)?;
    check_len(op, "out [N*OUT]", out.len(), s.n * s.out_f)?;
    if let Some(b) = bias {
        check_len(op, "bias [OUT]", b.len(), s.out_f)?;
    }
    // A = inp (r, i) at r*IN + i; B (i, o) = weight[o*IN + i]
    gemm(stream, out, inp, weight, bias, GemmLaunch::linear_forward(&s, bias.is_some())?)
}

/// Linear backward: `dinp [N, IN] += dout · weight` (skipped when `None`), `dweight [OUT, IN] += doutᵀ · inp`,
/// `dbias [OUT] += Σ_n dout` (skipped when `None`). `dout: [N, OUT]`. Launches `gemm` (x2 with `dinp`) and, with
/// `dbias`, `bias_backward` (one thread per output column).
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(stream: &Arc<CudaStream>, dinp: Option<&mut CudaViewMut<f32>>, dweight: &mut CudaViewMut<f32>, dbias: Option<&mut CudaViewMut<f32>>, dout: &CudaView<f32>, inp: &CudaView<f32>, weight: &CudaView<f32>, shape: &LinearShape) -> Result<()> {
    let op = "linear (cuda)";
    let s = LinearShape::new(shape.n, shape.in_f, shape.out_f)?;
    check_len(op, "inp [N*IN]", inp.len(), s.n * s.in_f)?;
    check_len(op, "weight [OUT*IN]", weight.len(), s.out_f * s.in_f)?;
    check_len(op, "dout [N*OUT]", dout.len(), s.n * s.out_f)?;
    check_len(op, "dweight [OUT*IN]", dweight.len(), s.out_f * s.in_f)?;
    if let Some(d) = &dinp {
        check_len(op, "dinp [N*IN]", d.len(), s.n * s.in_f)?;
    }
    if let Some(d) = &dbias {
        check_len(op, "dbias [OUT]", d.len(), s.out_f)?;
    }
    if s.out_f.div_ceil(TILE) > 65535 || s.n.div_ceil(TILE) > 65535 || s.in_f.div_ceil(TILE) > 65535 {
        return Err(Error::shape(op, "N, IN, OUT <= 65535*16", format!("N = {}, IN = {}, OUT = {}", s.n, s.in_f, s.out_f)));
    }
    if let Some(dx) = dinp {
        // A = dout (r, o) at r*OUT + o; B (o, i) = weight[o*IN + i]
        gemm(stream, dx, dout, weight, None, GemmLaunch::linear_backward_data(&s)?)?;
    }
    // A (o, r) = dout[r*OUT + o]; B (r, i) = inp[r*IN + i]
    gemm(stream, dweight, dout, inp, None, GemmLaunch::linear_backward_weight(&s)?)?;
    if dbias.is_some() {
        let (p, bias_grid) = PoolParams::bias_backward(&s);
        let f = function(stream, FILE, "bias_backward")?;
        let mut l = stream.launch_builder(&f);
        l.arg(&p).arg(dout);
        push_opt_mut(&mut l, dbias);
        // SAFETY: bias_backward(Params, const float* dy [N*OUT], float* dx [OUT]); dbias is Some here (never null);
        // thread col < OUT reads column col of dout and updates dbias[col].
        unsafe { l.launch(cfg(bias_grid)) }?;
    }
    Ok(())
}

fn elt(op: &'static str, s: &EltwiseShape, lens: &[(&str, usize)]) -> Result<PoolParams> {
    let s = EltwiseShape::new(s.len)?;
    for &(what, len) in lens {
        check_len(op, what, len, s.len)?;
    }
    Ok(PoolParams::eltwise(s.len))
}

/// ReLU forward: `out = max(inp, 0)`. Launches `relu_forward`, one thread per element.
pub fn relu_forward(stream: &Arc<CudaStream>, out: &mut CudaViewMut<f32>, inp: &CudaView<f32>, shape: &EltwiseShape) -> Result<()> {
    let p = elt("relu (cuda)", shape, &[("out", out.len()), ("inp", inp.len())])?;
    // SAFETY: relu_forward(Params, const float* x [len], float* yout [len]); thread i < len touches index i.
    launch!(stream, "relu_forward", p, elem_grid(shape.len), inp, out);
    Ok(())
}

/// ReLU backward: `dinp += dout · (out > 0)`, `out` the forward's output. Launches `relu_backward`.
pub fn relu_backward(stream: &Arc<CudaStream>, dinp: &mut CudaViewMut<f32>, dout: &CudaView<f32>, out: &CudaView<f32>, shape: &EltwiseShape) -> Result<()> {
    let p = elt("relu (cuda)", shape, &[("dinp", dinp.len()), ("dout", dout.len()), ("out", out.len())])?;
    // SAFETY: relu_backward(Params, const float* x = out [len], const float* dy [len], float* dx [len]); thread i < len.
    launch!(stream, "relu_backward", p, elem_grid(shape.len), out, dout, dinp);
    Ok(())
}

/// Residual add forward: `out = a + b`. Launches `add_forward`.
pub fn add_forward(stream: &Arc<CudaStream>, out: &mut CudaViewMut<f32>, a: &CudaView<f32>, b: &CudaView<f32>, shape: &EltwiseShape) -> Result<()> {
    let p = elt("add (cuda)", shape, &[("out", out.len()), ("a", a.len()), ("b", b.len())])?;
    // SAFETY: add_forward(Params, const float* x = a [len], float* yout [len], const float* dy = b [len]); thread i < len.
    launch!(stream, "add_forward", p, elem_grid(shape.len), a, out, b);
    Ok(())
}
