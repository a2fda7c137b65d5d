//! Optimiser steps on wgpu (`shaders/optim.wgsl`): SGD, AdamW and LARS as fused kernels over flat parameter
//! buffers, the same algorithms, scalar roundings and validation as the CPU references of [`crate::optim`]
//! ([`crate::optim::sgd_step`], [`crate::optim::adamw_step`], [`crate::optim::lars_step`]).
//!
//! Two levels, as elsewhere in the crate: low-level functions that take the caller's buffers ([`sgd_step`],
//! [`adamw_step`], [`lars_norms`], [`lars_update`], [`lars_step`]) and, written once over every device,
//! [`crate::optim::DeviceOptimizer`], which owns the state buffers.
//!
//! Buffer arguments are `&dyn AsGpuSlice`: a whole `wgpu::Buffer` or a [`GpuSlice`] of a bigger one (a model's
//! flat parameters and gradients may be two slices of one allocation). Each must hold exactly `len` f32, and no
//! two of them may overlap. Every function only records and submits work; read results back with
//! [`crate::device::Device::read`].
//!
//! # Memory traffic (the bandwidth floor)
//!
//! Each step is one pass over the flat buffers (LARS: two), so its cost is the bytes it moves per parameter:
//!
//! | kernel | reads | writes | bytes / parameter |
//! |---|---|---|---|
//! | `sgd_step`, momentum 0 | p, g | p | 12 |
//! | `sgd_step`, first step | p, g | p, buf | 16 |
//! | `sgd_step` | p, g, buf | p, buf | 20 |
//! | `adamw_step` | p, g, m, v | p, m, v | 28 |
//! | LARS (`lars_partial_norms` + `lars_update`) | p, g; then p, g, mu | p, mu | 28 (8 in pass 1, 20 in pass 2) |
//!
//! plus O(spans + len / [`LARS_CHUNK`](super::params::LARS_CHUNK)) bytes of LARS tables and partial sums. At a memory bandwidth `B`, one
//! step over `n` parameters takes at least `bytes * n / B`: e.g. ResNet-50 (25.6 M parameters) with SGD moves
//! 512 MB, about 0.11 ms at 4.8 TB/s (H200); ViT-B (86 M) with AdamW moves 2.4 GB, 0.5 ms.

use super::params::{adamw_params, elementwise_grid, lars_params, lars_tables, sgd_params, OptimParams};
use super::KERNELS;
use crate::device::wgpu::{submit, AsGpuSlice, Dispatch, GpuSlice, Wgpu};
use crate::error::{Error, Result};
use crate::ops::launch::grid_2d;
use super::config::{AdamWConfig, LarsConfig, ParamSpans, SgdConfig};


/// Checks that `buf` holds exactly `len` f32.
fn check_slice(op: &'static str, what: &str, buf: &GpuSlice<'_>, len: usize) -> Result<()> {
    if buf.len() != len {
        return Err(Error::shape(op, format!("{what} of exactly {len} f32"), format!("{} f32", buf.len())));
    }
    Ok(())
}

/// Fails when two of the named slices share bytes of one buffer (a kernel would read what another binding writes).
fn check_disjoint(op: &'static str, slices: &[(&str, GpuSlice<'_>)]) -> Result<()> {
    for (i, (na, a)) in slices.iter().enumerate() {
        for (nb, b) in &slices[i + 1..] {
            let overlap = a.offset() < b.offset() + b.size() && b.offset() < a.offset() + a.size();
            if a.buffer() == b.buffer() && overlap {
                return Err(Error::shape(op, format!("{na} and {nb} in disjoint buffer ranges"), format!("overlapping bytes {}..{} and {}..{}", a.offset(), a.offset() + a.size(), b.offset(), b.offset() + b.size())));
            }
        }
    }
    Ok(())
}

/// One SGD step over flat buffers (`torch.optim.SGD`), the GPU form of [`crate::optim::sgd_step`].
///
/// `params: [len]` is updated in place, `grads: [len]` read; `momentum_buf: [len]` is the state, required when
/// `config.momentum > 0` and ignored (may be `None`) when it is 0. `first_step` says the buffer holds nothing
/// yet (torch's `momentum_buffer is None`): it is then set to `d_p` instead of being decayed.
pub fn sgd_step(ctx: &Wgpu, params: &dyn AsGpuSlice, momentum_buf: Option<&dyn AsGpuSlice>, grads: &dyn AsGpuSlice, config: &SgdConfig, first_step: bool) -> Result<()> {
    let op = "sgd (wgpu)";
    let (p, g) = (params.as_gpu_slice(), grads.as_gpu_slice());
    let len = p.len();
    let u = sgd_params(config, len, first_step)?;
    check_slice(op, "params", &p, len)?;
    check_slice(op, "grads", &g, len)?;
    let mut named = vec![("params", p), ("grads", g)];
    if config.momentum != 0.0 {
        let b = momentum_buf.ok_or_else(|| Error::shape(op, "a momentum buffer when momentum > 0", "None"))?.as_gpu_slice();
        check_slice(op, "momentum_buf", &b, len)?;
        named.push(("momentum_buf", b));
    }
    check_disjoint(op, &named)?;
    let (groups, _) = elementwise_grid(len);
    ctx.scoped(|| {
        let dummy = ctx.dummy();
        let b = named.get(2).map(|x| x.1).unwrap_or(GpuSlice::from(&dummy));
        let pipeline = KERNELS.wgpu_pipeline(ctx, "sgd_step", None);
        submit(ctx, &[(bytemuck::bytes_of(&u), Dispatch { pipeline, buffers: vec![(1, p), (2, g), (3, b)], grid: (groups, 1, 1) })])
    })
}

/// One AdamW step over flat buffers (`torch.optim.AdamW`), the GPU form of [`crate::optim::adamw_step`].
///
/// `params, exp_avg, exp_avg_sq: [len]` are updated in place, `grads: [len]` read. `step` is the 1-based index of
/// this step (torch's `state['step']` after its increment), used by the bias corrections.
pub fn adamw_step(ctx: &Wgpu, params: &dyn AsGpuSlice, exp_avg: &dyn AsGpuSlice, exp_avg_sq: &dyn AsGpuSlice, grads: &dyn AsGpuSlice, config: &AdamWConfig, step: u64) -> Result<()> {
    let op = "adamw (wgpu)";
    let (p, m, v, g) = (params.as_gpu_slice(), exp_avg.as_gpu_slice(), exp_avg_sq.as_gpu_slice(), grads.as_gpu_slice());
    let len = p.len();
    let u = adamw_params(config, len, step)?;
    check_slice(op, "params", &p, len)?;
    check_slice(op, "grads", &g, len)?;
    check_slice(op, "exp_avg", &m, len)?;
    check_slice(op, "exp_avg_sq", &v, len)?;
    check_disjoint(op, &[("params", p), ("grads", g), ("exp_avg", m), ("exp_avg_sq", v)])?;
    let (groups, _) = elementwise_grid(len);
    ctx.scoped(|| {
        let pipeline = KERNELS.wgpu_pipeline(ctx, "adamw_step", None);
        submit(ctx, &[(bytemuck::bytes_of(&u), Dispatch { pipeline, buffers: vec![(1, p), (2, g), (3, m), (4, v)], grid: (groups, 1, 1) })])
    })
}

/// The device-side description of a LARS parameter buffer: its [`ParamSpans`], the segment and span tables the
/// kernels walk, and the scratch buffers of the norm pass (partial sums per segment, squared norms per span).
/// Built once per model and reused every step.
#[derive(Debug)]
pub struct LarsPlan {
    spans: ParamSpans,
    segments: wgpu::Buffer,
    span_table: wgpu::Buffer,
    partials: wgpu::Buffer,
    norms_sq: wgpu::Buffer,
    n_segments: usize,
}

impl LarsPlan {
    /// Uploads the tables of `spans` and allocates the scratch buffers.
    pub fn new(ctx: &Wgpu, spans: &ParamSpans) -> Result<Self> {
        let (segs, table) = lars_tables(spans);
        if segs.len() > 65535 * 65535 || table.len() > 65535 * 65535 {
            return Err(Error::shape("lars (wgpu)", "at most 65535^2 segments and spans", format!("{} segments, {} spans", segs.len(), table.len())));
        }
        ctx.scoped(|| {
            Ok(Self {
                spans: spans.clone(),
                segments: ctx.upload_pod("moco lars segments", &segs),
                span_table: ctx.upload_pod("moco lars spans", &table),
                partials: ctx.storage_buffer("moco lars partials", segs.len() as u64 * 8),
                norms_sq: ctx.storage_buffer("moco lars norms", table.len() as u64 * 8),
                n_segments: segs.len(),
            })
        })
    }
    /// The tensors of the buffer.
    pub fn spans(&self) -> &ParamSpans {
        &self.spans
    }
    /// Segments (pieces of at most [`LARS_CHUNK`](super::params::LARS_CHUNK) elements of one span): the workgroups of the norm and update
    /// passes.
    pub fn segments(&self) -> usize {
        self.n_segments
    }
    /// Per span, `(||p||^2, ||g + wd * p||^2)` as `[spans][2]` f32 from the last [`lars_norms`] (zeros for 1-d
    /// spans).
    pub fn norms_sq(&self) -> &wgpu::Buffer {
        &self.norms_sq
    }
    /// [`LarsPlan::norms_sq`] read back to the host.
    pub fn read_norms_sq(&self, ctx: &Wgpu) -> Result<Vec<[f32; 2]>> {
        let flat: Vec<f32> = ctx.read_elems(&self.norms_sq, 2 * self.spans.spans().len())?;
        Ok(flat.chunks_exact(2).map(|c| [c[0], c[1]]).collect())
    }
    fn check(&self, op: &'static str, p: &GpuSlice<'_>, g: &GpuSlice<'_>) -> Result<()> {
        check_slice(op, "params (the spans' total)", p, self.spans.len())?;
        check_slice(op, "grads", g, self.spans.len())
    }
    /// The checks of the update pass ([`lars_update`], [`lars_step`]): `config`, then `params` and `grads` (as
    /// [`LarsPlan::check`]), `mu` of the same length, and no two of them overlapping; gives back the three slices.
    fn check_update<'b>(&self, config: &LarsConfig, params: &'b dyn AsGpuSlice, mu: &'b dyn AsGpuSlice, grads: &'b dyn AsGpuSlice) -> Result<(GpuSlice<'b>, GpuSlice<'b>, GpuSlice<'b>)> {
        let op = "lars (wgpu)";
        config.validate()?;
        let (p, m, g) = (params.as_gpu_slice(), mu.as_gpu_slice(), grads.as_gpu_slice());
        self.check(op, &p, &g)?;
        check_slice(op, "mu", &m, self.spans.len())?;
        check_disjoint(op, &[("params", p), ("mu", m), ("grads", g)])?;
        Ok((p, m, g))
    }
    fn norm_dispatches<'a>(&'a self, ctx: &Wgpu, p: GpuSlice<'a>, g: GpuSlice<'a>, u: OptimParams) -> [(OptimParams, Dispatch<'a>); 2] {
        let n_spans = self.spans.spans().len();
        [
            (
                OptimParams { count: self.n_segments as u32, ..u },
                Dispatch {
                    pipeline: KERNELS.wgpu_pipeline(ctx, "lars_partial_norms", None),
                    buffers: vec![(1, p), (2, g), (5, GpuSlice::from(&self.segments)), (7, GpuSlice::from(&self.partials))],
                    grid: grid_2d(self.n_segments),
                },
            ),
            (
                OptimParams { count: n_spans as u32, ..u },
                Dispatch {
                    pipeline: KERNELS.wgpu_pipeline(ctx, "lars_span_norms", None),
                    buffers: vec![(6, GpuSlice::from(&self.span_table)), (7, GpuSlice::from(&self.partials)), (8, GpuSlice::from(&self.norms_sq))],
                    grid: grid_2d(n_spans),
                },
            ),
        ]
    }
    fn update_dispatch<'a>(&'a self, ctx: &Wgpu, p: GpuSlice<'a>, mu: GpuSlice<'a>, g: GpuSlice<'a>, u: OptimParams) -> (OptimParams, Dispatch<'a>) {
        (
            OptimParams { count: self.n_segments as u32, ..u },
            Dispatch {
                pipeline: KERNELS.wgpu_pipeline(ctx, "lars_update", None),
                buffers: vec![(1, p), (2, g), (3, mu), (5, GpuSlice::from(&self.segments)), (8, GpuSlice::from(&self.norms_sq))],
                grid: grid_2d(self.n_segments),
            },
        )
    }
}

fn run(ctx: &Wgpu, steps: Vec<(OptimParams, Dispatch)>) -> Result<()> {
    ctx.scoped(|| {
        let (us, ds): (Vec<OptimParams>, Vec<Dispatch>) = steps.into_iter().unzip();
        let refs: Vec<(&[u8], Dispatch)> = us.iter().map(bytemuck::bytes_of).zip(ds).collect();
        submit(ctx, &refs)
    })
}

/// LARS pass 1 (`lars_partial_norms` then `lars_span_norms`): per span of `plan`, `(||p||^2, ||g + wd * p||^2)`
/// into [`LarsPlan::norms_sq`] (zeros for 1-d spans), the GPU form of [`crate::optim::lars_norms`]. Partial sums
/// per segment, then a fixed-order tree per span, in f32: deterministic, no atomics. `params, grads: [len]` read.
pub fn lars_norms(ctx: &Wgpu, plan: &LarsPlan, params: &dyn AsGpuSlice, grads: &dyn AsGpuSlice, weight_decay: f64) -> Result<()> {
    let op = "lars (wgpu)";
    LarsConfig { weight_decay, ..LarsConfig::new(0.0, 0.0) }.validate()?;
    let (p, g) = (params.as_gpu_slice(), grads.as_gpu_slice());
    plan.check(op, &p, &g)?;
    check_disjoint(op, &[("params", p), ("grads", g)])?;
    let u = lars_params(&LarsConfig { weight_decay, ..LarsConfig::new(0.0, 0.0) }, plan.spans.len());
    run(ctx, plan.norm_dispatches(ctx, p, g, u).into_iter().collect())
}

/// LARS pass 2 (`lars_update`): `mu = momentum * mu + dp; p -= lr * mu` with `dp = (g + wd * p) * q` on spans with
/// `ndim > 1`, `q` the trust ratio from [`LarsPlan::norms_sq`] (computed per span in the kernel), and `dp = g`
/// otherwise; the GPU form of [`crate::optim::lars_update`]. `params, mu: [len]` updated, `grads: [len]` read.
pub fn lars_update(ctx: &Wgpu, plan: &LarsPlan, params: &dyn AsGpuSlice, mu: &dyn AsGpuSlice, grads: &dyn AsGpuSlice, config: &LarsConfig) -> Result<()> {
    let (p, m, g) = plan.check_update(config, params, mu, grads)?;
    run(ctx, vec![plan.update_dispatch(ctx, p, m, g, lars_params(config, plan.spans.len()))])
}

/// One LARS step (both passes, three dispatches in one submission), the GPU form of [`crate::optim::lars_step`].
/// `params, mu: [len]` updated, `grads: [len]` read; `plan` describes the spans and holds the norms.
pub fn lars_step(ctx: &Wgpu, plan: &LarsPlan, params: &dyn AsGpuSlice, mu: &dyn AsGpuSlice, grads: &dyn AsGpuSlice, config: &LarsConfig) -> Result<()> {
    let (p, m, g) = plan.check_update(config, params, mu, grads)?;
    let u = lars_params(config, plan.spans.len());
    let mut steps: Vec<_> = plan.norm_dispatches(ctx, p, g, u).into_iter().collect();
    steps.push(plan.update_dispatch(ctx, p, m, g, u));
    run(ctx, steps)
}

impl super::Optim for Wgpu {
    type LarsPlan = LarsPlan;
    fn sgd_step(&mut self, params: GpuSlice<'_>, momentum_buf: Option<GpuSlice<'_>>, grads: GpuSlice<'_>, config: &SgdConfig, first_step: bool) -> Result<()> {
        sgd_step(self, &params, momentum_buf.as_ref().map(|b| b as &dyn AsGpuSlice), &grads, config, first_step)
    }
    fn adamw_step(&mut self, params: GpuSlice<'_>, exp_avg: GpuSlice<'_>, exp_avg_sq: GpuSlice<'_>, grads: GpuSlice<'_>, config: &AdamWConfig, step: u64) -> Result<()> {
        adamw_step(self, &params, &exp_avg, &exp_avg_sq, &grads, config, step)
    }
    fn lars_plan(&mut self, spans: &ParamSpans) -> Result<LarsPlan> {
        LarsPlan::new(self, spans)
    }
    fn lars_step(&mut self, plan: &mut LarsPlan, params: GpuSlice<'_>, mu: GpuSlice<'_>, grads: GpuSlice<'_>, config: &LarsConfig) -> Result<()> {
        lars_step(self, plan, &params, &mu, &grads, config)
    }
}
