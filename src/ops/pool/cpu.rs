//! Max pooling (ResNet's 3x3 stride 2 padding 1, any square window) and global average pooling, NCHW.

use super::{GlobalAvgPoolShape, MaxPool2dShape};
use super::Pool;
use crate::error::{Error, Result};
use rayon::prelude::*;

/// Max pooling forward: `out [N, C, OH, OW]`, and `argmax [N, C, OH, OW]`, the index `ih*W + iw` of the winner
/// inside its `[H, W]` plane (first maximum in scan order; a NaN wins, as in torch). `inp: [N, C, H, W]`.
pub fn maxpool2d_forward(out: &mut [f32], argmax: &mut [u32], inp: &[f32], shape: &MaxPool2dShape) -> Result<()> {
    let s = *shape;
    s.check(("inp", inp.len()), ("out", out.len()), argmax.len())?;
    let (oh, ow, hw) = (s.out_h(), s.out_w(), s.h * s.w);
    out.par_chunks_mut(oh * ow).zip(argmax.par_chunks_mut(oh * ow)).zip(inp.par_chunks(hw)).for_each(|((y, idx), x)| {
        for oy in 0..oh {
            let y0 = (oy * s.stride) as isize - s.pad as isize;
            let (ylo, yhi) = (y0.max(0) as usize, ((y0 + s.k as isize) as usize).min(s.h));
            for ox in 0..ow {
                let x0 = (ox * s.stride) as isize - s.pad as isize;
                let (xlo, xhi) = (x0.max(0) as usize, ((x0 + s.k as isize) as usize).min(s.w));
                let mut best = f32::NEG_INFINITY;
                let mut bi = ylo * s.w + xlo;
                'win: for iy in ylo..yhi {
                    for ix in xlo..xhi {
                        let v = x[iy * s.w + ix];
                        if v > best || v.is_nan() {
                            best = v;
                            bi = iy * s.w + ix;
                            if v.is_nan() {
                                break 'win;
                            }
                        }
                    }
                }
                y[oy * ow + ox] = best;
                idx[oy * ow + ox] = bi as u32;
            }
        }
    });
    Ok(())
}

/// Max pooling backward: `dinp [N, C, H, W] += dout` scattered to the saved `argmax` positions. Returns an error
/// (before writing anything) if an index lies outside its plane.
pub fn maxpool2d_backward(dinp: &mut [f32], dout: &[f32], argmax: &[u32], shape: &MaxPool2dShape) -> Result<()> {
    let s = *shape;
    s.check(("dinp", dinp.len()), ("dout", dout.len()), argmax.len())?;
    let hw = s.h * s.w;
    if let Some(bad) = argmax.par_iter().find_any(|&&i| i as usize >= hw) {
        return Err(Error::shape("maxpool2d", format!("argmax indices < H*W = {hw}"), format!("index {bad}")));
    }
    let ohw = s.out_h() * s.out_w();
    dinp.par_chunks_mut(hw).zip(dout.par_chunks(ohw)).zip(argmax.par_chunks(ohw)).for_each(|((dx, dy), idx)| {
        for (&g, &i) in dy.iter().zip(idx) {
            dx[i as usize] += g;
        }
    });
    Ok(())
}

/// Global average pooling forward: `out [N, C] = mean over HW of inp [N, C, HW]`.
pub fn global_avgpool_forward(out: &mut [f32], inp: &[f32], shape: &GlobalAvgPoolShape) -> Result<()> {
    let s = *shape;
    s.check(("inp", inp.len()), ("out", out.len()))?;
    let inv = 1.0 / s.hw as f32;
    out.par_iter_mut().zip(inp.par_chunks(s.hw)).for_each(|(y, x)| *y = x.iter().sum::<f32>() * inv);
    Ok(())
}

/// Global average pooling backward: `dinp [N, C, HW] += dout [N, C] / HW`.
pub fn global_avgpool_backward(dinp: &mut [f32], dout: &[f32], shape: &GlobalAvgPoolShape) -> Result<()> {
    let s = *shape;
    s.check(("dinp", dinp.len()), ("dout", dout.len()))?;
    let inv = 1.0 / s.hw as f32;
    dinp.par_chunks_mut(s.hw).zip(dout.par_iter()).for_each(|(dx, &g)| dx.iter_mut().for_each(|d| *d += g * inv));
    Ok(())
}

impl Pool for crate::device::CpuDevice {
    fn maxpool2d_forward(&mut self, out: &mut [f32], argmax: &mut [u32], inp: &[f32], shape: &MaxPool2dShape) -> Result<()> {
        maxpool2d_forward(out, argmax, inp, shape)
    }
    fn maxpool2d_backward(&mut self, dinp: &mut [f32], dout: &[f32], argmax: &[u32], shape: &MaxPool2dShape) -> Result<()> {
        maxpool2d_backward(dinp, dout, argmax, shape)
    }
    fn global_avgpool_forward(&mut self, out: &mut [f32], inp: &[f32], shape: &GlobalAvgPoolShape) -> Result<()> {
        global_avgpool_forward(out, inp, shape)
    }
    fn global_avgpool_backward(&mut self, dinp: &mut [f32], dout: &[f32], shape: &GlobalAvgPoolShape) -> Result<()> {
        global_avgpool_backward(dinp, dout, shape)
    }
}
