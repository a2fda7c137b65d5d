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
use crate::backend::cpu::nn::Conv2dShape;
use crate::error::{Error, Result};
use cudarc::driver::{CudaStream, CudaView, CudaViewMut, DeviceRepr, PushKernelArg};
use std::sync::Arc;

const FILE: &str = "conv.cu";
const TILE: usize = 64;
/// Largest grid y and z, and the largest x the host uses before splitting over z (as on wgpu).
const MAX_GROUPS: usize = 65535;

/// `struct Params` of `kernels/conv.cu` (the uniform block of `shaders/conv.wgsl`), passed by value: the
/// convolution and the GEMM it is computed as.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct Params {
    n: u32,
    c_in: u32,
    h: u32,
    w: u32,
    c_out: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    pad: u32,
    oh: u32,
    ow: u32,
    gemm_m: u32,
    gemm_n: u32,
    gemm_k: u32,
    pad0: u32,
    pad1: u32,
}

// SAFETY: #[repr(C)] plain-old-data of sixteen u32 fields, the layout of `struct Params` in kernels/conv.cu.
unsafe impl DeviceRepr for Params {}
const _: () = assert!(std::mem::size_of::<Params>() == 64 && std::mem::align_of::<Params>() == 4);
const _: () = assert!(std::mem::offset_of!(Params, gemm_k) == 52);

impl Params {
    fn new(s: &Conv2dShape, gemm_m: usize, gemm_n: usize, gemm_k: usize) -> Self {
        let u = |v: usize| v as u32; // every size is <= i32::MAX (Conv2dShape::new checks)
        Self {
            n: u(s.n),
            c_in: u(s.c_in),
            h: u(s.h),
            w: u(s.w),
            c_out: u(s.c_out),
            kh: u(s.kh),
            kw: u(s.kw),
            stride: u(s.stride),
            pad: u(s.pad),
            oh: u(s.out_h()),
            ow: u(s.out_w()),
            gemm_m: u(gemm_m),
            gemm_n: u(gemm_n),
            gemm_k: u(gemm_k),
            pad0: 0,
            pad1: 0,
        }
    }
}

/// Re-validates a shape (its fields are public, so it may not have come from [`Conv2dShape::new`]).
fn revalidate(s: &Conv2dShape) -> Result<Conv2dShape> {
    let v = Conv2dShape::new(s.n, s.c_in, s.h, s.w, s.c_out, s.kh, s.kw, s.stride, s.pad)?;
    // The kernels index in u32 with a few products of sizes (e.g. (oy*stride + ki) and C_out*KH*KW).
    let taps = v.c_out.checked_mul(v.kh * v.kw).filter(|&t| t <= i32::MAX as usize);
    if taps.is_none() || v.h + 2 * v.pad > i32::MAX as usize || v.w + 2 * v.pad > i32::MAX as usize {
        return Err(Error::shape("conv2d", "C_out*KH*KW and H, W + 2*pad at most i32::MAX", format!("{v:?}")));
    }
    Ok(v)
}

/// `Ok` when a view of `got` elements holds at least `elems` f32 (the wgpu backend's buffer-size rule).
pub(super) fn check_f32(op: &'static str, name: &str, got: usize, elems: usize) -> Result<()> {
    if got < elems {
        return Err(Error::shape(op, format!("{name} view of at least {elems} elements"), format!("{got} elements")));
    }
    Ok(())
}

/// The grid for a `gemm_m x gemm_n` output in 64x64 tiles: tiles over N split over x and z (each <= 65535),
/// tiles over M on y (`tile_n0()` in the kernel flattens x and z).
fn grid(op: &'static str, gemm_m: usize, gemm_n: usize) -> Result<(u32, u32, u32)> {
    let (tm, tn) = (gemm_m.div_ceil(TILE), gemm_n.div_ceil(TILE));
    let (x, z) = if tn <= MAX_GROUPS { (tn, 1) } else { (MAX_GROUPS, tn.div_ceil(MAX_GROUPS)) };
    if tm > MAX_GROUPS || z > MAX_GROUPS {
        return Err(Error::shape(op, format!("at most {} rows and {} columns in the GEMM", MAX_GROUPS * TILE, MAX_GROUPS * MAX_GROUPS * TILE), format!("{gemm_m} x {gemm_n}")));
    }
    Ok((x as u32, tm as u32, z as u32))
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
    let (m, n, k) = (s.c_out, s.n * s.out_h() * s.out_w(), s.c_in * s.kh * s.kw);
    let g = grid(op, m, n)?;
    let p = Params::new(&s, m, n, k);
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
    let khw = s.kh * s.kw;
    // dweight: M = C_out, N = C_in*KH*KW, K = N*OH*OW
    let (wm, wn, wk) = (s.c_out, s.c_in * khw, s.n * s.out_h() * s.out_w());
    let wg = grid(op, wm, wn)?;
    let wp = Params::new(&s, wm, wn, wk);
    // dinp: M = C_in, N = N*H*W, K = C_out*KH*KW
    let (dm, dn, dk) = (s.c_in, s.n * s.h * s.w, s.c_out * khw);
    let dg = grid(op, dm, dn)?;
    let dp = Params::new(&s, dm, dn, dk);
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
