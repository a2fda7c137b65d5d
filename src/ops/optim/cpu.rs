//! The optimiser steps on the CPU: the fused elementwise passes over flat buffers that the WGSL and CUDA kernels
//! mirror (torch's order of operations, f32 elementwise, f64 hyperparameters rounded where they meet the tensors).
//! The optimisers that own their state ([`crate::optim::Sgd`], [`crate::optim::AdamW`], [`crate::optim::Lars`])
//! call these.

use crate::device::CpuDevice;
use crate::error::{Error, Result};
use super::config::{check_buffer_len, check_len, check_nonneg, AdamWConfig, LarsConfig, ParamSpan, ParamSpans, SgdConfig, OPTIM_CHUNK};
use rayon::prelude::*;

/// One SGD step over flat buffers, the kernel of [`crate::optim::Sgd`]'s step.
///
/// `params: [len]` is updated in place; `momentum_buf: [len]` (or empty when `momentum == 0`) is the state;
/// `grads: [len]`. `first_step` says the buffer holds nothing yet (torch's `momentum_buffer is None`): it is
/// then set to `d_p` instead of being decayed.
pub fn sgd_step(params: &mut [f32], momentum_buf: &mut [f32], grads: &[f32], config: &SgdConfig, first_step: bool) -> Result<()> {
    config.validate()?;
    let len = params.len();
    check_buffer_len("sgd", len)?;
    check_len("sgd", "grads", len, grads.len())?;
    let SgdConfig { lr, momentum, dampening, weight_decay, nesterov } = *config;
    // torch: Python floats, rounded to f32 where they meet the tensors (`1 - dampening` first, in f64)
    let (lr, wd, one_minus_damp, momentum_f) = (lr as f32, weight_decay as f32, (1.0 - dampening) as f32, momentum as f32);
    if momentum == 0.0 {
        if !momentum_buf.is_empty() {
            check_len("sgd", "momentum_buf (or empty when momentum = 0)", len, momentum_buf.len())?;
        }
        params.par_chunks_mut(OPTIM_CHUNK).zip(grads.par_chunks(OPTIM_CHUNK)).for_each(|(pc, gc)| {
            for (p, &g) in pc.iter_mut().zip(gc) {
                let d_p = g + wd * *p;
                *p -= lr * d_p;
            }
        });
        return Ok(());
    }
    check_len("sgd", "momentum_buf", len, momentum_buf.len())?;
    params.par_chunks_mut(OPTIM_CHUNK).zip(momentum_buf.par_chunks_mut(OPTIM_CHUNK)).zip(grads.par_chunks(OPTIM_CHUNK)).for_each(|((pc, bc), gc)| {
        for ((p, b), &g) in pc.iter_mut().zip(bc.iter_mut()).zip(gc) {
            let d_p = g + wd * *p;
            let buf = if first_step { d_p } else { momentum_f * *b + one_minus_damp * d_p };
            *b = buf;
            let upd = if nesterov { d_p + momentum_f * buf } else { buf };
            *p -= lr * upd;
        }
    });
    Ok(())
}


/// One AdamW step over flat buffers, the kernel of [`crate::optim::AdamW`]'s step.
///
/// `params, exp_avg, exp_avg_sq: [len]` are updated in place; `grads: [len]`. `step` is the 1-based index of
/// this step (torch's `state['step']` after its increment), used by the bias corrections.
pub fn adamw_step(params: &mut [f32], exp_avg: &mut [f32], exp_avg_sq: &mut [f32], grads: &[f32], config: &AdamWConfig, step: u64) -> Result<()> {
    config.validate()?;
    let op = "adamw";
    if step == 0 {
        return Err(Error::shape(op, "1-based step >= 1", "step = 0"));
    }
    let len = params.len();
    check_buffer_len(op, len)?;
    check_len(op, "grads", len, grads.len())?;
    check_len(op, "exp_avg", len, exp_avg.len())?;
    check_len(op, "exp_avg_sq", len, exp_avg_sq.len())?;
    let AdamWConfig { lr, beta1, beta2, eps, weight_decay: wd } = *config;
    // torch: Python floats (f64) for the scalars, rounded to f32 where they meet the tensors
    let t = step.min(i32::MAX as u64) as i32;
    let bc1 = 1.0 - beta1.powi(t);
    let bc2 = 1.0 - beta2.powi(t);
    let step_size = (lr / bc1) as f32;
    let bc2_sqrt = bc2.sqrt() as f32;
    let decay = (1.0 - lr * wd) as f32;
    let decoupled = wd != 0.0;
    let (one_minus_b1, beta2_f, one_minus_b2, eps) = ((1.0 - beta1) as f32, beta2 as f32, (1.0 - beta2) as f32, eps as f32);
    params
        .par_chunks_mut(OPTIM_CHUNK)
        .zip(exp_avg.par_chunks_mut(OPTIM_CHUNK))
        .zip(exp_avg_sq.par_chunks_mut(OPTIM_CHUNK))
        .zip(grads.par_chunks(OPTIM_CHUNK))
        .for_each(|(((pc, mc), vc), gc)| {
            for (((p, m), v), &g) in pc.iter_mut().zip(mc.iter_mut()).zip(vc.iter_mut()).zip(gc) {
                let pd = if decoupled { *p * decay } else { *p };
                let mn = *m + one_minus_b1 * (g - *m);
                let vn = *v * beta2_f + one_minus_b2 * g * g;
                let denom = vn.sqrt() / bc2_sqrt + eps;
                *m = mn;
                *v = vn;
                *p = pd - step_size * (mn / denom);
            }
        });
    Ok(())
}


/// A piece of one span inside one chunk: the unit of work of both passes (a GPU block's share of a tensor).
#[derive(Clone, Copy, Debug)]
struct Segment {
    span: usize,
    start: usize,
    end: usize,
}

/// The span pieces, span by span, each at most [`OPTIM_CHUNK`] long.
fn segments(spans: &[ParamSpan]) -> Vec<Segment> {
    let mut out = Vec::new();
    for (i, s) in spans.iter().enumerate() {
        let mut start = s.offset;
        while start < s.offset + s.len {
            let end = (start + OPTIM_CHUNK).min(s.offset + s.len);
            out.push(Segment { span: i, start, end });
            start = end;
        }
    }
    out
}

fn check_buffers(spans: &ParamSpans, params: usize, grads: usize) -> Result<()> {
    check_len("lars", "params (the spans' total)", spans.len(), params)?;
    check_len("lars", "grads", spans.len(), grads)
}

/// Pass 1: per span, `(||p||^2, ||g + wd * p||^2)` in f64 (`[0.0, 0.0]` for spans with `ndim <= 1`, which need
/// no norms). `norms_sq: [spans]` is written; `params, grads: [len]` are read.
pub fn lars_norms(norms_sq: &mut [[f64; 2]], params: &[f32], grads: &[f32], spans: &ParamSpans, weight_decay: f64) -> Result<()> {
    check_nonneg("lars", "weight_decay", weight_decay)?;
    check_buffers(spans, params.len(), grads.len())?;
    check_len("lars", "norms_sq [spans]", spans.spans().len(), norms_sq.len())?;
    let wd = weight_decay as f32;
    let matrix: Vec<ParamSpan> = spans.spans().iter().copied().filter(ParamSpan::is_matrix).collect();
    let segs = segments(&matrix);
    // partial sums per segment (a GPU block each), then a fixed-order sum per span
    let partial: Vec<[f64; 2]> = segs
        .par_iter()
        .map(|s| {
            let (mut pp, mut uu) = (0.0f64, 0.0f64);
            for (&p, &g) in params[s.start..s.end].iter().zip(&grads[s.start..s.end]) {
                let dp = g + wd * p;
                pp += p as f64 * p as f64;
                uu += dp as f64 * dp as f64;
            }
            [pp, uu]
        })
        .collect();
    norms_sq.iter_mut().for_each(|n| *n = [0.0, 0.0]);
    let index: Vec<usize> = spans.spans().iter().enumerate().filter(|(_, s)| s.is_matrix()).map(|(i, _)| i).collect();
    for (s, p) in segs.iter().zip(&partial) {
        let n = &mut norms_sq[index[s.span]];
        n[0] += p[0];
        n[1] += p[1];
    }
    Ok(())
}

/// The trust ratio of one tensor from its squared norms: `trust * ||p|| / ||dp||` when both norms are > 0,
/// else 1 (moco-v3's nested `torch.where`).
pub fn trust_ratio(norms_sq: [f64; 2], trust_coefficient: f64) -> f32 {
    let (pn, un) = (norms_sq[0].sqrt(), norms_sq[1].sqrt());
    if pn > 0.0 && un > 0.0 {
        (trust_coefficient * pn / un) as f32
    } else {
        1.0
    }
}

/// Pass 2: the fused elementwise update `mu = momentum * mu + dp; p -= lr * mu`, with `dp = (g + wd * p) * q`
/// for spans with `ndim > 1` (`q` from [`trust_ratio`] of `norms_sq`) and `dp = g` otherwise.
/// `params, mu: [len]` are updated in place; `grads: [len]`, `norms_sq: [spans]` from [`lars_norms`].
pub fn lars_update(params: &mut [f32], mu: &mut [f32], grads: &[f32], norms_sq: &[[f64; 2]], spans: &ParamSpans, config: &LarsConfig) -> Result<()> {
    config.validate()?;
    check_buffers(spans, params.len(), grads.len())?;
    check_len("lars", "mu", spans.len(), mu.len())?;
    check_len("lars", "norms_sq [spans]", spans.spans().len(), norms_sq.len())?;
    let LarsConfig { lr, weight_decay: wd, momentum, trust_coefficient } = *config;
    let (lr, momentum) = (lr as f32, momentum as f32);
    // per span: (weight decay, trust ratio); (0, 1) and a plain `dp = g` for 1-d spans
    let coef: Vec<(bool, f32, f32)> = spans
        .spans()
        .iter()
        .zip(norms_sq)
        .map(|(s, &n)| if s.is_matrix() { (true, wd as f32, trust_ratio(n, trust_coefficient)) } else { (false, 0.0, 1.0) })
        .collect();
    let segs = segments(spans.spans());
    // one task per chunk of the flat buffer, each walking the span pieces it holds
    let chunk_starts: Vec<usize> = (0..params.len()).step_by(OPTIM_CHUNK).collect();
    params.par_chunks_mut(OPTIM_CHUNK).zip(mu.par_chunks_mut(OPTIM_CHUNK)).zip(chunk_starts.par_iter()).for_each(|((pc, mc), &c0)| {
        let c1 = c0 + pc.len();
        let first = segs.partition_point(|s| s.end <= c0);
        for s in segs[first..].iter().take_while(|s| s.start < c1) {
            let (a, b) = (s.start.max(c0), s.end.min(c1));
            let (matrix, wd, q) = coef[s.span];
            let (ps, ms, gs) = (&mut pc[a - c0..b - c0], &mut mc[a - c0..b - c0], &grads[a..b]);
            for ((p, m), &g) in ps.iter_mut().zip(ms.iter_mut()).zip(gs) {
                let dp = if matrix { (g + wd * *p) * q } else { g };
                let mn = momentum * *m + dp;
                *m = mn;
                *p -= lr * mn;
            }
        }
    });
    Ok(())
}

/// One LARS step (both passes) over flat buffers: `params, mu: [len]` updated, `grads: [len]` read.
pub fn lars_step(params: &mut [f32], mu: &mut [f32], grads: &[f32], spans: &ParamSpans, config: &LarsConfig) -> Result<()> {
    config.validate()?;
    let mut norms_sq = vec![[0.0f64; 2]; spans.spans().len()];
    lars_norms(&mut norms_sq, params, grads, spans, config.weight_decay)?;
    lars_update(params, mu, grads, &norms_sq, spans, config)
}



impl super::Optim for CpuDevice {
    type LarsPlan = ParamSpans;
    fn sgd_step(&mut self, params: &mut [f32], momentum_buf: Option<&mut [f32]>, grads: &[f32], config: &SgdConfig, first_step: bool) -> Result<()> {
        sgd_step(params, momentum_buf.unwrap_or(&mut []), grads, config, first_step)
    }
    fn adamw_step(&mut self, params: &mut [f32], exp_avg: &mut [f32], exp_avg_sq: &mut [f32], grads: &[f32], config: &AdamWConfig, step: u64) -> Result<()> {
        adamw_step(params, exp_avg, exp_avg_sq, grads, config, step)
    }
    fn lars_plan(&mut self, spans: &ParamSpans) -> Result<ParamSpans> {
        Ok(spans.clone())
    }
    fn lars_step(&mut self, plan: &mut ParamSpans, params: &mut [f32], mu: &mut [f32], grads: &[f32], config: &LarsConfig) -> Result<()> {
        lars_step(params, mu, grads, plan, config)
    }
}
