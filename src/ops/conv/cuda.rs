//! 2-D convolution on CUDA (`kernels/conv.cu`): forward, backward-data and backward-weight as tiled implicit GEMMs
//! (64x64 block tiles, 16-deep K chunks, 256 threads with 4x4 register micro-tiles; im2col gathered on the fly).
//! Same layouts, semantics, validation and grids as [`crate::backend::wgpu::conv`] and
//! [`crate::backend::cpu::nn::conv`]: NCHW, weight `[C_out, C_in, KH, KW]`, forward overwrites `out`, backward
//! accumulates into `dinp` and `dweight`.
//!
//! Buffers are cudarc views, so that sub-ranges of one big allocation (a network's activations, its flat parameter
//! and gradient buffers) can be passed directly: `&CudaView<f32>` for inputs (`slice.as_view()`, `slice.slice(a..b)`)
//! and `&mut CudaViewMut<f32>` for outputs (`slice.as_view_mut()`, `slice.slice_mut(a..b)`, `split_at_mut`). A
//! view must hold at least the element count of its tensor (as on wgpu, where a buffer may be larger). Every
//! function runs asynchronously on `stream`.

use super::context::{cfg, function};
use crate::backend::plan::{conv_revalidate as revalidate, ConvParams as Params};
use crate::backend::cpu::nn::Conv2dShape;
use crate::error::{Error, Result};
use cudarc::driver::{CudaStream, CudaView, CudaViewMut, DeviceRepr, PushKernelArg};
use std::sync::Arc;

// SAFETY: #[repr(C)] plain-old-data of sixteen u32 fields (size and offsets asserted in plan.rs), the layout of
// `struct Params` in kernels/conv.cu.
unsafe impl DeviceRepr for Params {}

const FILE: &str = "conv.cu";

/// `Ok` when a view of `got` elements holds at least `elems` f32 (the wgpu backend's buffer-size rule).
pub(super) fn check_f32(op: &'static str, name: &str, got: usize, elems: usize) -> Result<()> {
    if got < elems {
        return Err(Error::shape(op, format!("{name} view of at least {elems} elements"), format!("{got} elements")));
    }
    Ok(())
}

/// Conv2d forward: `out [N, C_out, OH, OW] = conv(inp [N, C_in, H, W], weight [C_out, C_in, KH, KW])`.
/// Overwrites `out`; runs asynchronously on `stream`.
///
/// Launches `conv2d_forward` (GEMM M = C_out, N = N*OH*OW, K = C_in*KH*KW) on a grid of 64x64 output tiles.
pub fn conv2d_forward(stream: &Arc<CudaStream>, out: &mut CudaViewMut<f32>, inp: &CudaView<f32>, weight: &CudaView<f32>, shape: &Conv2dShape) -> Result<()> {
    let op = "conv2d_forward";
    let s = revalidate(shape)?;
    check_f32(op, "out", out.len(), s.out_len())?;
    check_f32(op, "inp", inp.len(), s.inp_len())?;
    check_f32(op, "weight", weight.len(), s.weight_len())?;
    let p = Params::forward(&s);
    let g = p.grid(op)?;
    let f = function(stream, FILE, "conv2d_forward")?;
    // SAFETY: conv2d_forward(Params, const float* inp [N*C_in*H*W], const float* weight [C_out*C_in*KH*KW],
    // float* result [N*C_out*OH*OW]); the views hold at least those lengths (checked above); reads are guarded by
    // the GEMM bounds and the image bounds (col_value), writes by m < C_out and j < N*OH*OW.
    unsafe { stream.launch_builder(&f).arg(&p).arg(inp).arg(weight).arg(out).launch(cfg(g)) }?;
    Ok(())
}

/// Conv2d backward for upstream `dout [N, C_out, OH, OW]`: `dweight [C_out, C_in, KH, KW] += ...` and, when
/// given, `dinp [N, C_in, H, W] += ...`. Accumulates (zero the gradients once per step); runs asynchronously.
///
/// Launches `conv2d_backward_weight` (M = C_out, N = C_in*KH*KW, K = N*OH*OW), then, with `dinp`,
/// `conv2d_backward_data` (M = C_in, N = N*H*W, K = C_out*KH*KW: each input pixel gathers the taps that meet it,
/// no atomics).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward(stream: &Arc<CudaStream>, dinp: Option<&mut CudaViewMut<f32>>, dweight: &mut CudaViewMut<f32>, dout: &CudaView<f32>, inp: &CudaView<f32>, weight: &CudaView<f32>, shape: &Conv2dShape) -> Result<()> {
    let op = "conv2d_backward";
    let s = revalidate(shape)?;
    check_f32(op, "dweight", dweight.len(), s.weight_len())?;
    check_f32(op, "dout", dout.len(), s.out_len())?;
    check_f32(op, "inp", inp.len(), s.inp_len())?;
    check_f32(op, "weight", weight.len(), s.weight_len())?;
    if let Some(d) = &dinp {
        check_f32(op, "dinp", d.len(), s.inp_len())?;
    }
    // dweight: M = C_out, N = C_in*KH*KW, K = N*OH*OW
    let wp = Params::backward_weight(&s);
    let wg = wp.grid(op)?;
    // dinp: M = C_in, N = N*H*W, K = C_out*KH*KW
    let dp = Params::backward_data(&s);
    let dg = dp.grid(op)?;
    let f = function(stream, FILE, "conv2d_backward_weight")?;
    // SAFETY: conv2d_backward_weight(Params, const float* inp [N*C_in*H*W], const float* dout [N*C_out*OH*OW],
    // float* result [C_out*C_in*KH*KW]); lengths checked above; each dweight element is read-modified-written by
    // exactly one thread, guarded by m < C_out and j < C_in*KH*KW.
    unsafe { stream.launch_builder(&f).arg(&wp).arg(inp).arg(dout).arg(dweight).launch(cfg(wg)) }?;
    if let Some(d) = dinp {
        let f = function(stream, FILE, "conv2d_backward_data")?;
        // SAFETY: conv2d_backward_data(Params, const float* weight [C_out*C_in*KH*KW], const float* dout
        // [N*C_out*OH*OW], float* result [N*C_in*H*W]); lengths checked above; dout reads are guarded by
        // dout_gather (oy < OH, ox < OW), each dinp element is owned by one thread (m < C_in, j < N*H*W).
        unsafe { stream.launch_builder(&f).arg(&dp).arg(weight).arg(dout).arg(d).launch(cfg(dg)) }?;
    }
    Ok(())
}
