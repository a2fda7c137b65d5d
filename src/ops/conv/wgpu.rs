//! 2-D convolution on wgpu (`shaders/conv.wgsl`): forward, backward-data and backward-weight as tiled implicit
//! GEMMs (64x64 workgroup tiles, 16-deep K chunks, 256 threads with 4x4 register micro-tiles; im2col gathered
//! on the fly). Same layouts and semantics as [`crate::backend::cpu::nn::conv`]: NCHW, weight
//! `[C_out, C_in, KH, KW]`, forward overwrites `out`, backward accumulates into `dinp` and `dweight`.

use super::context::{submit, AsGpuSlice, Dispatch, GpuSlice, WgpuContext};
use crate::backend::plan::{conv_grid as grid, conv_revalidate as revalidate, ConvParams as Params};
use crate::backend::cpu::nn::Conv2dShape;
use crate::error::{Error, Result};

/// `shaders/conv.wgsl`
const SOURCE: &str = include_str!("../../../shaders/conv.wgsl");

fn check_f32(op: &'static str, name: &str, buf: GpuSlice<'_>, elems: usize) -> Result<()> {
    if buf.size() < (elems * 4) as u64 {
        return Err(Error::shape(op, format!("{name} buffer of at least {} bytes ({elems} f32)", elems * 4), format!("{} bytes", buf.size())));
    }
    Ok(())
}

/// Conv2d forward: `out [N, C_out, OH, OW] = conv(inp [N, C_in, H, W], weight [C_out, C_in, KH, KW])`.
/// Overwrites `out`; submits without waiting.
pub fn conv2d_forward(ctx: &WgpuContext, out: &dyn AsGpuSlice, inp: &dyn AsGpuSlice, weight: &dyn AsGpuSlice, shape: &Conv2dShape) -> Result<()> {
    let op = "conv2d_forward";
    let s = revalidate(shape)?;
    let (out, inp, weight) = (out.as_gpu_slice(), inp.as_gpu_slice(), weight.as_gpu_slice());
    check_f32(op, "out", out, s.out_len())?;
    check_f32(op, "inp", inp, s.inp_len())?;
    check_f32(op, "weight", weight, s.weight_len())?;
    let (m, n, k) = (s.c_out, s.n * s.out_h() * s.out_w(), s.c_in * s.kh * s.kw);
    let g = grid(op, m, n)?;
    let p = Params::new(&s, m, n, k);
    ctx.scoped(|| {
        let pipeline = ctx.pipeline("conv", SOURCE, "conv2d_forward", None);
        submit(ctx, &[(bytemuck::bytes_of(&p), Dispatch { pipeline, buffers: vec![(1, inp), (2, weight), (4, out)], grid: g })]);
        Ok(())
    })
}

/// Conv2d backward for upstream `dout [N, C_out, OH, OW]`: `dweight [C_out, C_in, KH, KW] += ...` and, when
/// given, `dinp [N, C_in, H, W] += ...`. Accumulates (zero the gradients once per step); submits without waiting.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward(ctx: &WgpuContext, dinp: Option<&dyn AsGpuSlice>, dweight: &dyn AsGpuSlice, dout: &dyn AsGpuSlice, inp: &dyn AsGpuSlice, weight: &dyn AsGpuSlice, shape: &Conv2dShape) -> Result<()> {
    let op = "conv2d_backward";
    let s = revalidate(shape)?;
    let (dweight, dout, inp, weight) = (dweight.as_gpu_slice(), dout.as_gpu_slice(), inp.as_gpu_slice(), weight.as_gpu_slice());
    let dinp = dinp.map(|d| d.as_gpu_slice());
    check_f32(op, "dweight", dweight, s.weight_len())?;
    check_f32(op, "dout", dout, s.out_len())?;
    check_f32(op, "inp", inp, s.inp_len())?;
    check_f32(op, "weight", weight, s.weight_len())?;
    if let Some(d) = dinp {
        check_f32(op, "dinp", d, s.inp_len())?;
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
    ctx.scoped(|| {
        let mut steps = vec![(
            bytemuck::bytes_of(&wp),
            Dispatch { pipeline: ctx.pipeline("conv", SOURCE, "conv2d_backward_weight", None), buffers: vec![(1, inp), (3, dout), (4, dweight)], grid: wg },
        )];
        if let Some(d) = dinp {
            steps.push((bytemuck::bytes_of(&dp), Dispatch { pipeline: ctx.pipeline("conv", SOURCE, "conv2d_backward_data", None), buffers: vec![(2, weight), (3, dout), (4, d)], grid: dg }));
        }
        submit(ctx, &steps);
        Ok(())
    })
}
