//! 2-D convolution without bias, NCHW, weight `[C_out, C_in, KH, KW]` (torch layout), by im2col + GEMM.
//!
//! Forward, per image: `col [C_in*KH*KW, OH*OW] = im2col(inp_n)`, then `out_n [C_out, OH*OW] = weight · col`.
//! Backward, per image: im2col again (recomputing is cheaper than keeping the columns), `dweight += dout_n · colᵀ`,
//! and `dcol = weightᵀ · dout_n`, scattered back by col2im into `dinp_n`. A 1x1 stride-1 unpadded convolution
//! skips im2col/col2im (the image is its own column matrix).
//!
//! Small output planes (fewer than 256 positions) make the backward GEMMs thin (`dout_n · colᵀ` has inner
//! dimension OH*OW), so there the backward pass batches a block of images: their columns side by side in one
//! `col [K, B*OH*OW]`, their output gradients gathered into `[C_out, B*OH*OW]`, one GEMM each for `dweight` and
//! for the block's `dcol`, then col2im per image.
//!
//! Parallelism: with at least as many images as rayon threads, the batch is split into one contiguous range of
//! images per thread, each with its own slice of `scratch` (columns, and a partial `dweight` in backward);
//! otherwise the images run in turn and the GEMM itself is parallel.
//!
//! 3x3 stride-1 convolutions (pad <= 2) may instead run Winograd: F(2x2, 3x3) (`winograd.rs`) for the
//! forward pass and the backward pass with an input gradient (both `dinp` and `dweight`), and F(4x4, 3x3)
//! (`winograd4.rs`) for that backward pass and for forward passes without gradients.
//!
//! Which algorithm a shape gets is, by default, a FIXED RULE ([`ruled_conv_algo`]): the same in every process, so
//! that the same command and seed give bit-identical results (the algorithms round differently). The rule is
//! what timing picked on ResNet-18's layers (BENCHMARKS.md, "Repeatable by default"). Timing the candidates
//! instead is an opt-in, as `cudnn.benchmark` is ([`set_conv_benchmark`], `--conv-benchmark`): the first
//! [`conv2d_forward`] / [`conv2d_backward`] call with a given shape (and rayon thread count, and whether `dinp` is
//! wanted) then runs each candidate five times, alternating, and takes the fastest of the last four runs of each
//! (the first warms caches and grows `scratch`). Either way the choice is cached in a process-wide table
//! ([`conv_algo_choices`] lists it, a run checkpoint records it, [`set_conv_algo_choice`] restores it, and a
//! stored choice wins over the rule and over timing). A timed call returns the chosen algorithm's result (the
//! backward restores `dinp`/`dweight` from a one-time snapshot before each trial run, so it still accumulates
//! exactly once).
//!
//! Why F(4x4, 3x3) is a candidate for the backward pass, and for a forward pass without gradients
//! ([`conv2d_forward_no_grad`]: a momentum encoder, embeddings), but not for a forward pass that gradients
//! follow: its rounding error is ~20x F(2x2)'s (tests/winograd.rs). In such a forward pass the error moves
//! pre-activations across ReLU's kink and through batch norm, and the ResNet-18 fixture's gradients then miss
//! PyTorch's by up to 9x their tolerance. In the backward pass the same error only perturbs gradient values,
//! linearly: forced on every 3x3 layer, the ResNet-18 fixture still uses under 1 % of its tolerance, and the
//! ResNet-50 one has a few more entries between 1x and 1.6x its tight bound, within its allowance for outliers
//! (F(2x2): at most 0.76x apart from the one outlier both share). Without a backward pass nothing differentiates
//! the output, which is then only ~5e-6 (relative) off. `MOCO_CONV_ALGO=im2col`, `=winograd` or `=winograd4x4`
//! forces one algorithm wherever it applies, forward included (for benchmarking). Only layers whose summed
//! channel count is at least [`AUTO_MIN_SUM`] get Winograd, by rule or by timing (numerics, see there; the RGB
//! stem stays im2col).
//! [`conv2d_forward_with`] and [`conv2d_backward_with`] run a given algorithm.

mod tasks;
pub(crate) mod winograd;
pub(crate) mod winograd4;

use super::Conv2dShape;
use crate::device::vector::vectorized;
use crate::ops::linear::gemm::gemm_strided;
use tasks::batch_split;
use winograd::{arr, winograd_3x3, winograd_3x3_dweight, Filter, WinoShape};
use winograd4::{winograd4_3x3, winograd4_3x3_dweight};
use crate::error::{Error, Result};
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Output planes smaller than this many positions are batched in the backward pass.
const BLOCK_BELOW: usize = 256;
/// Target column count `B*OH*OW` of one batched backward GEMM.
const BLOCK_COLS: usize = 512;

/// Images per batched backward GEMM for a task of `per` images: 1 (the per-image path) when the output plane has
/// at least `BLOCK_BELOW` positions, else enough images to reach about `BLOCK_COLS` columns, at most `per`.
/// (The forward GEMM `[C_out, K] · [K, OH*OW]` is already efficient at these sizes; the backward's
/// `dout_n · colᵀ` has inner dimension OH*OW, which is what batching fixes.)
fn block_images(s: &Conv2dShape, per: usize) -> usize {
    let ohw = s.out_h() * s.out_w();
    if ohw >= BLOCK_BELOW {
        1
    } else {
        BLOCK_COLS.div_ceil(ohw).min(per).max(1)
    }
}

/// The range of output positions `o` of a stride-1 convolution for which `o + k_off - pad` lies in
/// `[0, in_len)`, clamped to `[0, out_len)`.
fn valid_range(k_off: usize, pad: usize, in_len: usize, out_len: usize) -> (usize, usize) {
    let lo = pad.saturating_sub(k_off).min(out_len);
    let hi = (in_len + pad).saturating_sub(k_off).min(out_len);
    (lo, hi.max(lo))
}

/// Elements of the zero-padded plane `[H + 2*pad, W + 2*pad]` a strided convolution's im2col and col2im go
/// through (0 for stride 1, whose rows are contiguous copies).
fn padded_plane_len(s: &Conv2dShape) -> usize {
    if s.stride > 1 {
        (s.h + 2 * s.pad) * (s.w + 2 * s.pad)
    } else {
        0
    }
}

/// `col [C_in*KH*KW, OH*OW]` from one image `img [C_in, H, W]`; padding reads as zero. `plane`: at least
/// [`padded_plane_len`] elements of scratch.
fn im2col(col: &mut [f32], img: &[f32], s: &Conv2dShape, plane: &mut [f32]) {
    im2col_ld(col, s.out_h() * s.out_w(), img, s, plane)
}

/// As [`im2col`], into the first `OH*OW` columns of a column matrix whose rows are `ld` elements apart.
fn im2col_ld(col: &mut [f32], ld: usize, img: &[f32], s: &Conv2dShape, plane: &mut [f32]) {
    if s.stride > 1 {
        vectorized(#[inline(always)] || im2col_strided(col, ld, img, s, plane));
        return;
    }
    // stride 1: each tap's row is a clipped contiguous copy of an input row
    let (hw, ow, ohw) = (s.h * s.w, s.out_w(), s.out_h() * s.out_w());
    for t in stride1_taps(s) {
        let chan = &img[t.c * hw..(t.c + 1) * hw];
        let row = &mut col[t.r * ld..t.r * ld + ohw];
        let ((ylo, yhi), (xlo, xhi)) = (t.rows, t.cols);
        row[..ylo * ow].fill(0.0);
        row[yhi * ow..].fill(0.0);
        for oy in ylo..yhi {
            let src = &chan[(oy + t.ki - s.pad) * s.w..][..s.w];
            let dst = &mut row[oy * ow..(oy + 1) * ow];
            dst[..xlo].fill(0.0);
            dst[xhi..].fill(0.0);
            dst[xlo..xhi].copy_from_slice(&src[t.x0..t.x0 + (xhi - xlo)]);
        }
    }
}

/// One tap `(c, ki, kj)` of a stride-1 convolution: its row `r = (c*KH + ki)*KW + kj` of the column matrix, the
/// output rows `rows` and columns `cols` (half-open) where it reads inside the input (padding elsewhere), and the
/// input column `x0` that output column `cols.0` reads (0 where `cols` is empty: a kernel wider than the padded row).
struct Tap {
    c: usize,
    r: usize,
    ki: usize,
    rows: (usize, usize),
    cols: (usize, usize),
    x0: usize,
}

/// The taps of a stride-1 convolution in column-matrix row order.
fn stride1_taps(s: &Conv2dShape) -> impl Iterator<Item = Tap> + '_ {
    let (oh, ow) = (s.out_h(), s.out_w());
    (0..s.c_in).flat_map(move |c| (0..s.kh).flat_map(move |ki| (0..s.kw).map(move |kj| (c, ki, kj)))).map(move |(c, ki, kj)| {
        let cols = valid_range(kj, s.pad, s.w, ow);
        let x0 = if cols.1 > cols.0 { cols.0 + kj - s.pad } else { 0 };
        Tap { c, r: (c * s.kh + ki) * s.kw + kj, ki, rows: valid_range(ki, s.pad, s.h, oh), cols, x0 }
    })
}

/// `img [C_in, H, W] += col2im(col)`: the adjoint of [`im2col`] (padding positions are dropped).
fn col2im_add(img: &mut [f32], col: &[f32], s: &Conv2dShape, plane: &mut [f32]) {
    col2im_add_ld(img, col, s.out_h() * s.out_w(), s, plane)
}

/// As [`col2im_add`], from the first `OH*OW` columns of a column matrix whose rows are `ld` elements apart.
fn col2im_add_ld(img: &mut [f32], col: &[f32], ld: usize, s: &Conv2dShape, plane: &mut [f32]) {
    if s.stride > 1 {
        vectorized(#[inline(always)] || col2im_add_strided(img, col, ld, s, plane));
        return;
    }
    // stride 1: each tap's row adds, clipped, onto a contiguous input row
    let (hw, ow, ohw) = (s.h * s.w, s.out_w(), s.out_h() * s.out_w());
    for t in stride1_taps(s) {
        let chan = &mut img[t.c * hw..(t.c + 1) * hw];
        let row = &col[t.r * ld..t.r * ld + ohw];
        let ((ylo, yhi), (xlo, xhi)) = (t.rows, t.cols);
        for oy in ylo..yhi {
            let dst = &mut chan[(oy + t.ki - s.pad) * s.w..][..s.w];
            for (d, v) in dst[t.x0..t.x0 + (xhi - xlo)].iter_mut().zip(&row[oy * ow + xlo..oy * ow + xhi]) {
                *d += v;
            }
        }
    }
}

/// [`im2col_ld`] for stride > 1, through a zero-padded copy `plane [H + 2*pad, W + 2*pad]` of each input plane:
/// every output row of a tap is then a strided walk along one padded row, with no clipping (small planes spent
/// most of their time in the clipping of 4-wide rows).
#[inline(always)]
fn im2col_strided(col: &mut [f32], ld: usize, img: &[f32], s: &Conv2dShape, plane: &mut [f32]) {
    let (oh, ow, pw) = (s.out_h(), s.out_w(), s.w + 2 * s.pad);
    let plane = &mut plane[..padded_plane_len(s)];
    // the border stays zero: every channel writes the same interior
    plane.fill(0.0);
    for (c, src) in img.chunks_exact(s.h * s.w).enumerate() {
        for (r, row) in src.chunks_exact(s.w).enumerate() {
            plane[(r + s.pad) * pw + s.pad..][..s.w].copy_from_slice(row);
        }
        for ki in 0..s.kh {
            for kj in 0..s.kw {
                let at = ((c * s.kh + ki) * s.kw + kj) * ld;
                for (oy, dst) in col[at..at + oh * ow].chunks_exact_mut(ow).enumerate() {
                    let prow = &plane[(oy * s.stride + ki) * pw + kj..][..(ow - 1) * s.stride + 1];
                    if s.stride == 2 {
                        gather_stride2(dst, prow);
                    } else {
                        for (ox, d) in dst.iter_mut().enumerate() {
                            *d = prow[ox * s.stride];
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col_strided`]: per channel, the taps' rows are added into the zeroed `plane`, whose interior
/// is then added to `img`.
#[inline(always)]
fn col2im_add_strided(img: &mut [f32], col: &[f32], ld: usize, s: &Conv2dShape, plane: &mut [f32]) {
    let (oh, ow, pw) = (s.out_h(), s.out_w(), s.w + 2 * s.pad);
    let plane = &mut plane[..padded_plane_len(s)];
    for (c, dst) in img.chunks_exact_mut(s.h * s.w).enumerate() {
        plane.fill(0.0);
        for ki in 0..s.kh {
            for kj in 0..s.kw {
                let at = ((c * s.kh + ki) * s.kw + kj) * ld;
                for (oy, src) in col[at..at + oh * ow].chunks_exact(ow).enumerate() {
                    let prow = &mut plane[(oy * s.stride + ki) * pw + kj..][..(ow - 1) * s.stride + 1];
                    if s.stride == 2 {
                        scatter_add_stride2(prow, src);
                    } else {
                        for (ox, v) in src.iter().enumerate() {
                            prow[ox * s.stride] += v;
                        }
                    }
                }
            }
        }
        for (r, row) in dst.chunks_exact_mut(s.w).enumerate() {
            for (d, v) in row.iter_mut().zip(&plane[(r + s.pad) * pw + s.pad..][..s.w]) {
                *d += v;
            }
        }
    }
}

/// `dst[i] = src[2i]` for `i < dst.len()` (`src.len() >= 2 * dst.len() - 1`): 8 at a time from 15-value windows
/// (fixed-size arrays become shuffles), the rest one by one.
#[inline(always)]
fn gather_stride2(dst: &mut [f32], src: &[f32]) {
    let mut i = 0;
    while i + 8 <= dst.len() && 2 * i + 15 <= src.len() {
        let p: &[f32; 15] = src[2 * i..2 * i + 15].try_into().expect("15 values");
        let d: &mut [f32; 8] = (&mut dst[i..i + 8]).try_into().expect("8 values");
        *d = arr(#[inline(always)] |l| p[2 * l]);
        i += 8;
    }
    for (k, d) in dst.iter_mut().enumerate().skip(i) {
        *d = src[2 * k];
    }
}

/// `dst[2i] += src[i]`, the adjoint of [`gather_stride2`]: 8 at a time through 15-value windows of `dst` (the odd
/// positions are written back unchanged), the rest one by one.
#[inline(always)]
fn scatter_add_stride2(dst: &mut [f32], src: &[f32]) {
    let mut i = 0;
    while i + 8 <= src.len() && 2 * i + 15 <= dst.len() {
        let d: &mut [f32; 15] = (&mut dst[2 * i..2 * i + 15]).try_into().expect("15 values");
        let v: &[f32; 8] = src[i..i + 8].try_into().expect("8 values");
        let mut t = *d;
        for l in 0..8 {
            t[2 * l] += v[l];
        }
        *d = t;
        i += 8;
    }
    for (k, v) in src.iter().enumerate().skip(i) {
        dst[2 * k] += v;
    }
}

/// Convolution forward: `out [N, C_out, OH, OW] = conv2d(inp [N, C_in, H, W], weight [C_out, C_in, KH, KW])`
/// (overwrites `out`). `scratch` is grown as needed to hold one im2col matrix per task and may be reused across
/// calls and layers.
/// The algorithm is the rule's (or the timed) choice for this shape (see the module documentation).
pub fn conv2d_forward(out: &mut [f32], scratch: &mut Vec<f32>, inp: &[f32], weight: &[f32], shape: &Conv2dShape) -> Result<()> {
    forward_chosen(out, scratch, inp, weight, shape, Pass::Forward)
}

/// [`conv2d_forward`] for a network that no backward pass runs through (a momentum encoder, embeddings): the
/// choice may also be F(4x4, 3x3), whose rounding error only matters where gradients follow (see the
/// module documentation).
pub fn conv2d_forward_no_grad(out: &mut [f32], scratch: &mut Vec<f32>, inp: &[f32], weight: &[f32], shape: &Conv2dShape) -> Result<()> {
    forward_chosen(out, scratch, inp, weight, shape, Pass::ForwardNoGrad)
}

fn forward_chosen(out: &mut [f32], scratch: &mut Vec<f32>, inp: &[f32], weight: &[f32], shape: &Conv2dShape, pass: Pass) -> Result<()> {
    let s = *shape;
    s.check_forward(out.len(), inp.len(), weight.len())?;
    if !s.winograd_applies() || s.c_in < AUTO_MIN_SUM {
        forward_im2col(out, scratch, inp, weight, &s);
        return Ok(());
    }
    let key = (s, pass);
    let algo = match forced().or_else(|| chosen(key)) {
        Some(a) => a,
        None if !conv_benchmark() => ruled_and_remembered(key),
        None => {
            let candidates: &[ConvAlgo] = if pass == Pass::ForwardNoGrad { &ALL_CANDIDATES } else { &FORWARD_CANDIDATES };
            let algo = faster(candidates, |a| forward_algo(out, scratch, inp, weight, &s, a));
            remember(key, algo);
            // the result is the chosen algorithm's, never the last trial's: the algorithms round differently, and a
            // run must compute the same whether this call measured or not (bit-identical resume)
            algo
        }
    };
    forward_algo(out, scratch, inp, weight, &s, algo);
    Ok(())
}

/// [`conv2d_forward`] with a given algorithm; [`ConvAlgo::Winograd`] on a shape it does not apply to is an error.
pub fn conv2d_forward_with(out: &mut [f32], scratch: &mut Vec<f32>, inp: &[f32], weight: &[f32], algo: ConvAlgo, shape: &Conv2dShape) -> Result<()> {
    let s = *shape;
    s.check_forward(out.len(), inp.len(), weight.len())?;
    check_algo(algo, &s)?;
    forward_algo(out, scratch, inp, weight, &s, algo);
    Ok(())
}

fn check_algo(algo: ConvAlgo, s: &Conv2dShape) -> Result<()> {
    if algo != ConvAlgo::Im2col && !s.winograd_applies() {
        return Err(Error::shape("conv2d", "a 3x3 stride-1 convolution with pad <= 2 for Winograd", format!("{s:?}")));
    }
    Ok(())
}

/// The Winograd problem of a 3x3 stride-1 convolution (the forward correlation).
fn wino_shape(s: &Conv2dShape) -> WinoShape {
    WinoShape { n: s.n, c_in: s.c_in, h: s.h, w: s.w, c_out: s.c_out, pad: s.pad }
}

fn forward_algo(out: &mut [f32], scratch: &mut Vec<f32>, inp: &[f32], weight: &[f32], s: &Conv2dShape, algo: ConvAlgo) {
    match algo {
        ConvAlgo::Im2col => forward_im2col(out, scratch, inp, weight, s),
        ConvAlgo::Winograd => winograd_3x3(out, false, scratch, inp, weight, &wino_shape(s), Filter::Direct),
        ConvAlgo::Winograd4x4 => winograd4_3x3(out, false, scratch, inp, weight, &wino_shape(s), Filter::Direct),
    }
}

/// `out = conv2d(inp, weight)` by im2col + GEMM (lengths validated by the caller).
fn forward_im2col(out: &mut [f32], scratch: &mut Vec<f32>, inp: &[f32], weight: &[f32], s: &Conv2dShape) {
    let s = *s;
    let (k, ohw) = (s.c_in * s.kh * s.kw, s.out_h() * s.out_w());
    let (in_img, out_img, col_len) = (s.c_in * s.h * s.w, s.c_out * ohw, s.col_len().max(1));
    let task_len = col_len + padded_plane_len(&s);
    let (per, tasks, par_gemm) = batch_split(s.n);
    if scratch.len() < tasks * task_len {
        scratch.resize(tasks * task_len, 0.0);
    }
    inp.par_chunks(per * in_img).zip(out.par_chunks_mut(per * out_img)).zip(scratch.par_chunks_mut(task_len)).for_each(|((x, y), buf)| {
        let (col, plane) = buf.split_at_mut(col_len);
        for (x_n, y_n) in x.chunks(in_img).zip(y.chunks_mut(out_img)) {
            let b: &[f32] = if s.is_pointwise() {
                x_n
            } else {
                im2col(col, x_n, &s, plane);
                col
            };
            // y_n [C_out, OHW] = weight [C_out, K] · b [K, OHW]
            gemm_strided(y_n, ohw, 1, weight, k, 1, b, ohw, 1, s.c_out, ohw, k, 1.0, false, par_gemm);
        }
    });
}

/// Convolution backward: `dweight [C_out, C_in, KH, KW] += Σ_n dout_n · im2col(inp_n)ᵀ` and, when given,
/// `dinp [N, C_in, H, W] += col2im(weightᵀ · dout_n)` (pass `None` for the first layer). `dout: [N, C_out, OH, OW]`.
/// `scratch` is grown to hold, per task, one im2col matrix and one partial `dweight`.
/// The algorithm for `dinp` is the rule's (or the timed) choice for this shape (see the module documentation).
pub fn conv2d_backward(dinp: Option<&mut [f32]>, dweight: &mut [f32], scratch: &mut Vec<f32>, dout: &[f32], inp: &[f32], weight: &[f32], shape: &Conv2dShape) -> Result<()> {
    let s = *shape;
    s.check_backward(dinp.as_deref().map(|d| d.len()), dweight.len(), dout.len(), inp.len(), weight.len())?;
    let Some(dx) = dinp else {
        backward_im2col(None, dweight, scratch, dout, inp, weight, &s);
        return Ok(());
    };
    if !s.winograd_applies() || s.c_out < AUTO_MIN_SUM {
        backward_im2col(Some(dx), dweight, scratch, dout, inp, weight, &s);
        return Ok(());
    }
    let key = (s, Pass::BackwardData);
    let algo = match forced().or_else(|| chosen(key)) {
        Some(a) => a,
        None if !conv_benchmark() => ruled_and_remembered(key),
        None => {
            // one-time snapshot so that every trial run accumulates onto the caller's gradients
            let (dx0, dw0) = (dx.to_vec(), dweight.to_vec());
            let algo = faster(&ALL_CANDIDATES, |a| {
                dx.copy_from_slice(&dx0);
                dweight.copy_from_slice(&dw0);
                backward_algo(&mut *dx, &mut *dweight, scratch, dout, inp, weight, &s, a);
            });
            remember(key, algo);
            // as in the forward pass: the chosen algorithm's result, accumulated onto the caller's gradients
            dx.copy_from_slice(&dx0);
            dweight.copy_from_slice(&dw0);
            algo
        }
    };
    backward_algo(dx, dweight, scratch, dout, inp, weight, &s, algo);
    Ok(())
}

/// [`conv2d_backward`] with a given algorithm for `dinp`; [`ConvAlgo::Winograd`] on a shape it does not apply to
/// is an error (with `dinp = None`, the first layer, `dweight` is always im2col + GEMM).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward_with(dinp: Option<&mut [f32]>, dweight: &mut [f32], scratch: &mut Vec<f32>, dout: &[f32], inp: &[f32], weight: &[f32], algo: ConvAlgo, shape: &Conv2dShape) -> Result<()> {
    let s = *shape;
    s.check_backward(dinp.as_deref().map(|d| d.len()), dweight.len(), dout.len(), inp.len(), weight.len())?;
    check_algo(algo, &s)?;
    match dinp {
        Some(dx) => backward_algo(dx, dweight, scratch, dout, inp, weight, &s, algo),
        None => backward_im2col(None, dweight, scratch, dout, inp, weight, &s),
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn backward_algo(dx: &mut [f32], dweight: &mut [f32], scratch: &mut Vec<f32>, dout: &[f32], inp: &[f32], weight: &[f32], s: &Conv2dShape, algo: ConvAlgo) {
    match algo {
        ConvAlgo::Im2col => backward_im2col(Some(dx), dweight, scratch, dout, inp, weight, s),
        ConvAlgo::Winograd | ConvAlgo::Winograd4x4 => {
            // dweight [C_out, C_in, 3, 3] += the Winograd adjoint of the forward pass;
            // dinp [N, C_in, H, W] += dout [N, C_out, OH, OW] ⋆ flip(weight)ᵀ, padded by 2 - pad
            let ws = WinoShape { n: s.n, c_in: s.c_out, h: s.out_h(), w: s.out_w(), c_out: s.c_in, pad: 2 - s.pad };
            if algo == ConvAlgo::Winograd4x4 {
                winograd4_3x3_dweight(dweight, scratch, dout, inp, &wino_shape(s));
                winograd4_3x3(dx, true, scratch, dout, weight, &ws, Filter::FlippedTransposed);
            } else {
                winograd_3x3_dweight(dweight, scratch, dout, inp, &wino_shape(s));
                winograd_3x3(dx, true, scratch, dout, weight, &ws, Filter::FlippedTransposed);
            }
        }
    }
}

/// `dweight += ...` and optionally `dinp += ...` by im2col + GEMM (lengths validated by the caller).
#[allow(clippy::too_many_arguments)]
fn backward_im2col(dinp: Option<&mut [f32]>, dweight: &mut [f32], scratch: &mut Vec<f32>, dout: &[f32], inp: &[f32], weight: &[f32], s: &Conv2dShape) {
    let s = *s;
    let (k, ohw) = (s.c_in * s.kh * s.kw, s.out_h() * s.out_w());
    let (in_img, out_img, col_len, wl) = (s.c_in * s.h * s.w, s.c_out * ohw, s.col_len().max(1), s.weight_len());
    let (per, tasks, par_gemm) = batch_split(s.n);
    let bl = block_images(&s, per);
    if bl > 1 {
        backward_blocked(dinp, dweight, scratch, dout, inp, weight, &s, per, tasks, bl, par_gemm);
        return;
    }
    let task_len = col_len + wl + padded_plane_len(&s);
    let tasks_of = BackwardTasks { per, tasks, in_img, out_img, task_len, dw_at: col_len, dw_len: wl };
    tasks_of.run(dinp, dweight, scratch, dout, inp, |x, dy, buf, mut dx| {
        let (col, rest) = buf.split_at_mut(col_len);
        let (dw, plane) = rest.split_at_mut(wl);
        for (i, (x_n, dy_n)) in x.chunks(in_img).zip(dy.chunks(out_img)).enumerate() {
            let b: &[f32] = if s.is_pointwise() {
                x_n
            } else {
                im2col(col, x_n, &s, plane);
                col
            };
            // dw [C_out, K] (+)= dy_n [C_out, OHW] · b [K, OHW]ᵀ
            gemm_strided(dw, k, 1, dy_n, ohw, 1, b, 1, ohw, s.c_out, k, ohw, 1.0, i > 0, par_gemm);
            if let Some(dx) = dx.as_deref_mut() {
                let dx_n = &mut dx[i * in_img..(i + 1) * in_img];
                // [K, OHW] = weightᵀ [K, C_out] · dy_n [C_out, OHW]
                if s.is_pointwise() {
                    gemm_strided(dx_n, ohw, 1, weight, 1, k, dy_n, ohw, 1, k, ohw, s.c_out, 1.0, true, par_gemm);
                } else {
                    gemm_strided(col, ohw, 1, weight, 1, k, dy_n, ohw, 1, k, ohw, s.c_out, 1.0, false, par_gemm);
                    col2im_add(dx_n, col, &s, plane);
                }
            }
        }
    });
}

/// How a backward pass splits the batch: `tasks` parallel tasks of `per` images (`in_img` / `out_img` floats each),
/// each with `task_len` floats of scratch whose `[dw_at, dw_at + dw_len)` holds the task's partial `dweight`.
struct BackwardTasks {
    per: usize,
    tasks: usize,
    in_img: usize,
    out_img: usize,
    task_len: usize,
    dw_at: usize,
    dw_len: usize,
}

impl BackwardTasks {
    /// Runs `task(x, dy, scratch, dx)` on every task in parallel (`x`, `dy`, `dx`: the task's images), then
    /// `dweight += Σ_tasks partial dweight` in a fixed order (deterministic for a given thread count).
    #[allow(clippy::type_complexity)]
    fn run(&self, dinp: Option<&mut [f32]>, dweight: &mut [f32], scratch: &mut Vec<f32>, dout: &[f32], inp: &[f32], task: impl Fn(&[f32], &[f32], &mut [f32], Option<&mut [f32]>) + Sync + Send) {
        let (per, tasks, task_len) = (self.per, self.tasks, self.task_len);
        if scratch.len() < tasks * task_len {
            scratch.resize(tasks * task_len, 0.0);
        }
        let dinp_chunks: Vec<Option<&mut [f32]>> = match dinp {
            Some(d) => d.chunks_mut(per * self.in_img).map(Some).collect(),
            None => (0..tasks).map(|_| None).collect(),
        };
        let scratch = &mut scratch[..tasks * task_len];
        inp.par_chunks(per * self.in_img)
            .zip(dout.par_chunks(per * self.out_img))
            .zip(scratch.par_chunks_mut(task_len))
            .zip(dinp_chunks.into_par_iter())
            .for_each(|(((x, dy), buf), dx)| task(x, dy, buf, dx));
        for t in 0..tasks {
            let part = &scratch[t * task_len + self.dw_at..][..self.dw_len];
            dweight.par_iter_mut().zip(part.par_iter()).for_each(|(d, p)| *d += p);
        }
    }
}

/// Backward over blocks of `bl` images: the block's columns `col [K, bl*OHW]` and its gathered output gradient
/// `dyb [C_out, bl*OHW]` give `dw (+)= dyb · colᵀ` in one GEMM and `dcol = weightᵀ · dyb` in another, which is
/// scattered back per image by col2im.
#[allow(clippy::too_many_arguments)]
fn backward_blocked(dinp: Option<&mut [f32]>, dweight: &mut [f32], scratch: &mut Vec<f32>, dout: &[f32], inp: &[f32], weight: &[f32], s: &Conv2dShape, per: usize, tasks: usize, bl: usize, par_gemm: bool) {
    let (k, ohw) = (s.c_in * s.kh * s.kw, s.out_h() * s.out_w());
    let (in_img, out_img, wl) = (s.c_in * s.h * s.w, s.c_out * ohw, s.weight_len());
    let ld = bl * ohw;
    let (col_len, dy_len) = (k * ld, s.c_out * ld);
    let task_len = col_len + dy_len + wl + padded_plane_len(s);
    let tasks_of = BackwardTasks { per, tasks, in_img, out_img, task_len, dw_at: col_len + dy_len, dw_len: wl };
    tasks_of.run(dinp, dweight, scratch, dout, inp, |x, dy, buf, mut dx| {
        let (col, rest) = buf.split_at_mut(col_len);
        let (dyb, rest) = rest.split_at_mut(dy_len);
        let (dw, plane) = rest.split_at_mut(wl);
        for (i, (xb, dyblk)) in x.chunks(bl * in_img).zip(dy.chunks(bl * out_img)).enumerate() {
            let nb = xb.len() / in_img;
            let cols = nb * ohw;
            for (b, (x_n, dy_n)) in xb.chunks(in_img).zip(dyblk.chunks(out_img)).enumerate() {
                im2col_ld(&mut col[b * ohw..], ld, x_n, s, plane);
                for (c, src) in dy_n.chunks(ohw).enumerate() {
                    dyb[c * ld + b * ohw..c * ld + (b + 1) * ohw].copy_from_slice(src);
                }
            }
            // dw [C_out, K] (+)= dyb [C_out, cols] · col [K, cols]ᵀ
            gemm_strided(dw, k, 1, dyb, ld, 1, col, 1, ld, s.c_out, k, cols, 1.0, i > 0, par_gemm);
            if let Some(dx) = dx.as_deref_mut() {
                // col [K, cols] = weightᵀ [K, C_out] · dyb [C_out, cols]
                gemm_strided(col, ld, 1, weight, 1, k, dyb, ld, 1, k, cols, s.c_out, 1.0, false, par_gemm);
                let dxb = &mut dx[i * bl * in_img..(i * bl + nb) * in_img];
                for (b, dx_n) in dxb.chunks_mut(in_img).enumerate() {
                    col2im_add_ld(dx_n, &col[b * ohw..], ld, s, plane);
                }
            }
        }
    });
}

/// The rule and the timed choice consider Winograd only where the channel sum it transforms (C_in forward, C_out for the
/// input gradient) has at least this many channels. Below that the GEMMs are degenerate (K = 3 for an RGB stem)
/// and Winograd's transform error is not amortised over a long sum: on the ResNet-18 CIFAR fixture
/// (tests/resnet.rs) a Winograd stem (3 -> 64) moves `bn1.weight`'s gradient past the fixture's tolerance
/// (12 of 64 entries beyond 2e-3 of the largest), while every 64..512-channel layer passes.
pub const AUTO_MIN_SUM: usize = 16;

/// A convolution algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConvAlgo {
    /// im2col + GEMM (every shape).
    Im2col,
    /// Winograd F(2x2, 3x3) (3x3, stride 1, pad <= 2): the forward pass, or `dinp` and `dweight` in backward.
    Winograd,
    /// Winograd F(4x4, 3x3) (where F(2x2, 3x3) applies): the forward pass, or `dinp` and `dweight` in backward.
    /// 1.8x fewer multiplies than F(2x2, 3x3), but ~20x its rounding error (tests/winograd.rs): a
    /// candidate for the backward pass and for a forward pass without gradients (see the module notes); a forward
    /// pass that gradients follow runs it only when asked (`*_with`, `MOCO_CONV_ALGO=winograd4x4`, or
    /// [`set_conv_algo_choice`]).
    Winograd4x4,
}

/// Which pass a cached choice is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pass {
    /// `out = conv(inp, weight)`.
    Forward,
    /// The same, in a network that no backward pass runs through ([`conv2d_forward_no_grad`]).
    ForwardNoGrad,
    /// The backward pass with an input gradient (`dweight` and `dinp`).
    BackwardData,
}

type ChoiceKey = (Conv2dShape, Pass);

/// The choices made so far, per shape, pass and rayon thread count.
fn table() -> &'static Mutex<HashMap<(ChoiceKey, usize), ConvAlgo>> {
    static T: OnceLock<Mutex<HashMap<(ChoiceKey, usize), ConvAlgo>>> = OnceLock::new();
    T.get_or_init(|| Mutex::new(HashMap::new()))
}

fn chosen(key: ChoiceKey) -> Option<ConvAlgo> {
    let t = table().lock().unwrap_or_else(|e| e.into_inner());
    t.get(&(key, rayon::current_num_threads())).copied()
}

fn remember(key: ChoiceKey, algo: ConvAlgo) {
    let mut t = table().lock().unwrap_or_else(|e| e.into_inner());
    t.insert((key, rayon::current_num_threads()), algo);
}

/// Sets the choice for `shape` and `pass` at the current rayon thread count, as if the rule or timing had made it: a resumed
/// run restores its checkpoint's choices so that it computes with the same algorithms (bit-identical resume).
pub fn set_conv_algo_choice(shape: Conv2dShape, pass: Pass, algo: ConvAlgo) {
    remember((shape, pass), algo);
}

/// The default algorithm of a shape and pass: a fixed rule, so that every process computes the same. It is what
/// timing the candidates picked on ResNet-18's layers at batch 64 with the AVX-512 GEMM (BENCHMARKS.md,
/// "Repeatable by default"):
/// - im2col where Winograd does not apply (not 3x3 stride 1 pad <= 2) or the transformed channel sum (C_in
///   forward, C_out for the input gradient) is under [`AUTO_MIN_SUM`];
/// - a forward pass that gradients follow: F(2x2, 3x3) (F(4x4)'s rounding error is too large there, see the
///   module notes);
/// - a forward pass without gradients, and the backward pass with an input gradient: F(4x4, 3x3) where the output
///   plane is at least 8x8, else F(2x2, 3x3) (a 4x4 plane is one F(4x4) tile per image, whose transforms then
///   cost more than the multiplies they save).
pub fn ruled_conv_algo(shape: &Conv2dShape, pass: Pass) -> ConvAlgo {
    let sum = if pass == Pass::BackwardData { shape.c_out } else { shape.c_in };
    if !shape.winograd_applies() || sum < AUTO_MIN_SUM {
        return ConvAlgo::Im2col;
    }
    let large_plane = shape.out_h() >= 8 && shape.out_w() >= 8;
    match pass {
        Pass::Forward => ConvAlgo::Winograd,
        Pass::ForwardNoGrad | Pass::BackwardData if large_plane => ConvAlgo::Winograd4x4,
        Pass::ForwardNoGrad | Pass::BackwardData => ConvAlgo::Winograd,
    }
}

fn ruled_and_remembered(key: ChoiceKey) -> ConvAlgo {
    let algo = ruled_conv_algo(&key.0, key.1);
    remember(key, algo);
    algo
}

static BENCHMARK: AtomicBool = AtomicBool::new(false);

/// Times the candidate algorithms of each new shape in this process instead of applying [`ruled_conv_algo`]
/// (off by default, as `cudnn.benchmark` is): sometimes faster on a CPU unlike the one the rule was measured on,
/// but the choice then depends on the host's load, and two runs of the same command may differ in their last
/// bits and then in their trajectories. Choices already made (or restored from a checkpoint) stay.
pub fn set_conv_benchmark(on: bool) {
    BENCHMARK.store(on, Ordering::Relaxed);
}

/// Whether [`set_conv_benchmark`] is on.
pub fn conv_benchmark() -> bool {
    BENCHMARK.load(Ordering::Relaxed)
}

/// How this process picks the CPU convolution algorithms, for a run's settings block.
pub fn conv_choice_description() -> String {
    match forced() {
        Some(a) => format!("{a:?} wherever it applies (MOCO_CONV_ALGO)"),
        None if conv_benchmark() => "timed per shape in this process (--conv-benchmark; runs may differ in their last bits)".to_string(),
        None => "a fixed rule per shape (repeatable; --conv-benchmark times the candidates instead)".to_string(),
    }
}

/// What timing tries for the forward pass (F(4x4) only on request: see the module notes).
const FORWARD_CANDIDATES: [ConvAlgo; 2] = [ConvAlgo::Im2col, ConvAlgo::Winograd];
/// What timing tries for the backward pass with an input gradient, and for a forward pass without gradients.
const ALL_CANDIDATES: [ConvAlgo; 3] = [ConvAlgo::Im2col, ConvAlgo::Winograd, ConvAlgo::Winograd4x4];

/// Trial rounds of the timed choice: the first warms caches and grows `scratch`, the others are timed. Five
/// (not three) because on a busy host two timed runs let a 25 % slower algorithm win about one time in two
/// (seen on ResNet-18's 256-channel backward, F(2x2) against F(4x4)).
const TRIAL_ROUNDS: usize = 5;

/// Runs `trial` with each of `candidates` [`TRIAL_ROUNDS`] times, alternating (forward and reverse order in turn,
/// so that none always runs after the same one), and returns the one with the smallest time after the first round
/// (the first listed on a tie).
fn faster(candidates: &[ConvAlgo], mut trial: impl FnMut(ConvAlgo)) -> ConvAlgo {
    let mut best = vec![Duration::MAX; candidates.len()];
    for round in 0..TRIAL_ROUNDS {
        for k in 0..candidates.len() {
            let i = if round % 2 == 0 { k } else { candidates.len() - 1 - k };
            let t = Instant::now();
            trial(candidates[i]);
            if round > 0 {
                best[i] = best[i].min(t.elapsed());
            }
        }
    }
    let fastest = (0..candidates.len()).min_by_key(|&i| best[i]).unwrap_or(0);
    candidates[fastest]
}

/// `MOCO_CONV_ALGO=im2col|winograd|winograd4x4`, read once.
fn forced() -> Option<ConvAlgo> {
    static F: OnceLock<Option<ConvAlgo>> = OnceLock::new();
    *F.get_or_init(|| match std::env::var("MOCO_CONV_ALGO").as_deref() {
        Ok("im2col") => Some(ConvAlgo::Im2col),
        Ok("winograd") => Some(ConvAlgo::Winograd),
        Ok("winograd4x4") => Some(ConvAlgo::Winograd4x4),
        _ => None,
    })
}

/// The choices so far (ruled, timed or restored): `(shape, pass, rayon threads, algorithm)`, sorted for printing.
pub fn conv_algo_choices() -> Vec<(Conv2dShape, Pass, usize, ConvAlgo)> {
    let t = table().lock().unwrap_or_else(|e| e.into_inner());
    let mut v: Vec<_> = t.iter().map(|(&((s, p), th), &a)| (s, p, th, a)).collect();
    // a total order (the table is a HashMap): a checkpoint that records the choices is then byte-identical across runs
    v.sort_by_key(|(s, p, th, _)| (s.c_in, s.h, s.w, s.c_out, s.n, s.kh, s.kw, s.stride, s.pad, *p as u8, *th));
    v
}

/// The CPU device's convolution scratch (im2col columns, Winograd tiles), grown to the largest need and reused.
#[derive(Default)]
struct ConvScratch(Vec<f32>);

impl super::Conv for crate::device::CpuDevice {
    fn conv2d_forward(&mut self, out: &mut [f32], inp: &[f32], weight: &[f32], shape: &Conv2dShape) -> Result<()> {
        conv2d_forward(out, &mut self.op_state::<ConvScratch>().0, inp, weight, shape)
    }
    fn conv2d_forward_no_grad(&mut self, out: &mut [f32], inp: &[f32], weight: &[f32], shape: &Conv2dShape) -> Result<()> {
        conv2d_forward_no_grad(out, &mut self.op_state::<ConvScratch>().0, inp, weight, shape)
    }
    fn conv2d_backward(&mut self, dinp: Option<&mut [f32]>, dweight: &mut [f32], dout: &[f32], inp: &[f32], weight: &[f32], shape: &Conv2dShape) -> Result<()> {
        conv2d_backward(dinp, dweight, &mut self.op_state::<ConvScratch>().0, dout, inp, weight, shape)
    }
}
