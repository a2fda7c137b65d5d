//! Optimiser steps on wgpu (`shaders/optim.wgsl`): SGD, AdamW and LARS as fused kernels over flat parameter
//! buffers, the same algorithms, scalar roundings and validation as the CPU references of [`crate::optim`]
//! ([`crate::optim::sgd_step`], [`crate::optim::adamw_step`], [`crate::optim::lars_step`]).
//!
//! Two levels, as elsewhere in the crate: low-level functions that take the caller's buffers ([`sgd_step`],
//! [`adamw_step`], [`lars_norms`], [`lars_update`], [`lars_step`]) and stateful optimisers that own their state
//! buffers ([`WgpuSgd`], [`WgpuAdamW`], [`WgpuLars`]) with the API of [`crate::optim::Sgd`] and friends.
//!
//! Buffer arguments are `&dyn AsGpuSlice`: a whole `wgpu::Buffer` or a [`GpuSlice`] of a bigger one (a model's
//! flat parameters and gradients may be two slices of one allocation). Each must hold exactly `len` f32, and no
//! two of them may overlap. Every function only records and submits work; read results back with
//! [`crate::Device::read`].
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
use crate::optim::{AdamWConfig, LarsConfig, OptimizerConfig, ParamSpans, SgdConfig};


/// Checks that `buf` holds exactly `len` f32.
fn check_slice(op: &'static str, what: &str, buf: &GpuSlice<'_>, len: usize) -> Result<()> {
    if buf.size() != len as u64 * 4 {
        return Err(Error::shape(op, format!("{what} of exactly {len} f32 ({} bytes)", len * 4), format!("{} bytes", buf.size())));
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
    let len = (p.size() / 4) as usize;
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
        let dummy = ctx.storage_buffer("moco sgd no momentum", 16);
        let b = named.get(2).map(|x| x.1).unwrap_or(GpuSlice::from(&dummy));
        let pipeline = KERNELS.wgpu_pipeline(ctx, "sgd_step", None);
        submit(ctx, &[(bytemuck::bytes_of(&u), Dispatch { pipeline, buffers: vec![(1, p), (2, g), (3, b)], grid: (groups, 1, 1) })]);
        Ok(())
    })
}

/// One AdamW step over flat buffers (`torch.optim.AdamW`), the GPU form of [`crate::optim::adamw_step`].
///
/// `params, exp_avg, exp_avg_sq: [len]` are updated in place, `grads: [len]` read. `step` is the 1-based index of
/// this step (torch's `state['step']` after its increment), used by the bias corrections.
pub fn adamw_step(ctx: &Wgpu, params: &dyn AsGpuSlice, exp_avg: &dyn AsGpuSlice, exp_avg_sq: &dyn AsGpuSlice, grads: &dyn AsGpuSlice, config: &AdamWConfig, step: u64) -> Result<()> {
    let op = "adamw (wgpu)";
    let (p, m, v, g) = (params.as_gpu_slice(), exp_avg.as_gpu_slice(), exp_avg_sq.as_gpu_slice(), grads.as_gpu_slice());
    let len = (p.size() / 4) as usize;
    let u = adamw_params(config, len, step)?;
    check_slice(op, "params", &p, len)?;
    check_slice(op, "grads", &g, len)?;
    check_slice(op, "exp_avg", &m, len)?;
    check_slice(op, "exp_avg_sq", &v, len)?;
    check_disjoint(op, &[("params", p), ("grads", g), ("exp_avg", m), ("exp_avg_sq", v)])?;
    let (groups, _) = elementwise_grid(len);
    ctx.scoped(|| {
        let pipeline = KERNELS.wgpu_pipeline(ctx, "adamw_step", None);
        submit(ctx, &[(bytemuck::bytes_of(&u), Dispatch { pipeline, buffers: vec![(1, p), (2, g), (3, m), (4, v)], grid: (groups, 1, 1) })]);
        Ok(())
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
        submit(ctx, &refs);
        Ok(())
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
    let op = "lars (wgpu)";
    config.validate()?;
    let (p, m, g) = (params.as_gpu_slice(), mu.as_gpu_slice(), grads.as_gpu_slice());
    plan.check(op, &p, &g)?;
    check_slice(op, "mu", &m, plan.spans.len())?;
    check_disjoint(op, &[("params", p), ("mu", m), ("grads", g)])?;
    run(ctx, vec![plan.update_dispatch(ctx, p, m, g, lars_params(config, plan.spans.len()))])
}

/// One LARS step (both passes, three dispatches in one submission), the GPU form of [`crate::optim::lars_step`].
/// `params, mu: [len]` updated, `grads: [len]` read; `plan` describes the spans and holds the norms.
pub fn lars_step(ctx: &Wgpu, plan: &LarsPlan, params: &dyn AsGpuSlice, mu: &dyn AsGpuSlice, grads: &dyn AsGpuSlice, config: &LarsConfig) -> Result<()> {
    let op = "lars (wgpu)";
    config.validate()?;
    let (p, m, g) = (params.as_gpu_slice(), mu.as_gpu_slice(), grads.as_gpu_slice());
    plan.check(op, &p, &g)?;
    check_slice(op, "mu", &m, plan.spans.len())?;
    check_disjoint(op, &[("params", p), ("mu", m), ("grads", g)])?;
    let u = lars_params(config, plan.spans.len());
    let mut steps: Vec<_> = plan.norm_dispatches(ctx, p, g, u).into_iter().collect();
    steps.push(plan.update_dispatch(ctx, p, m, g, u));
    run(ctx, steps)
}

/// Validates a new learning rate against a configuration's own check (finite, >= 0).
fn check_lr(op: &'static str, lr: f64) -> Result<()> {
    if !(lr.is_finite() && (lr as f32).is_finite() && lr >= 0.0) {
        return Err(Error::shape(op, "finite lr >= 0", format!("lr = {lr}")));
    }
    Ok(())
}

/// `torch.optim.SGD` on wgpu over one flat parameter buffer, owning its momentum buffer: the GPU twin of
/// [`crate::optim::Sgd`].
///
/// It does not implement [`crate::optim::Optimizer`], whose `step` takes host slices and whose `state` lends host
/// slices; here parameters, gradients and state stay on the device. The methods are the trait's, with a
/// context and device buffers.
#[derive(Debug)]
pub struct WgpuSgd {
    config: SgdConfig,
    momentum_buf: Option<wgpu::Buffer>,
    steps: u64,
    len: usize,
}

impl WgpuSgd {
    /// An optimiser for a flat buffer of `len` parameters (momentum buffer zeroed on the device); validates the
    /// configuration.
    pub fn new(ctx: &Wgpu, config: SgdConfig, len: usize) -> Result<Self> {
        sgd_params(&config, len, true)?;
        let momentum_buf = if config.momentum == 0.0 { None } else { Some(ctx.scoped(|| Ok(ctx.storage_buffer("moco sgd momentum_buffer", len as u64 * 4)))?) };
        Ok(Self { config, momentum_buf, steps: 0, len })
    }
    /// One step: updates `params: [len]` from `grads: [len]` and the momentum buffer.
    pub fn step(&mut self, ctx: &Wgpu, params: &dyn AsGpuSlice, grads: &dyn AsGpuSlice) -> Result<()> {
        check_slice("sgd (wgpu)", "params", &params.as_gpu_slice(), self.len)?;
        sgd_step(ctx, params, self.momentum_buf.as_ref().map(|b| b as &dyn AsGpuSlice), grads, &self.config, self.steps == 0)?;
        self.steps += 1;
        Ok(())
    }
    /// The hyperparameters.
    pub fn config(&self) -> &SgdConfig {
        &self.config
    }
    /// Parameters per step.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Always false (`len >= 1`).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The momentum buffer `[len]` (`None` when momentum is 0).
    pub fn momentum_buffer(&self) -> Option<&wgpu::Buffer> {
        self.momentum_buf.as_ref()
    }
    /// The learning rate of the next step.
    pub fn lr(&self) -> f64 {
        self.config.lr
    }
    /// Sets the learning rate of the following steps; finite, >= 0.
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        check_lr("sgd", lr)?;
        self.config.lr = lr;
        Ok(())
    }
    /// Steps taken so far (0 means the next step initialises the momentum buffer).
    pub fn steps(&self) -> u64 {
        self.steps
    }
    /// Sets the step count (when resuming, together with the state buffers).
    pub fn set_steps(&mut self, steps: u64) {
        self.steps = steps;
    }
    /// The state buffers by torch's names (`momentum_buffer`), each `[len]`.
    pub fn state(&self) -> Vec<(&'static str, &wgpu::Buffer)> {
        self.momentum_buf.iter().map(|b| ("momentum_buffer", b)).collect()
    }
}

/// `torch.optim.AdamW` on wgpu over one flat parameter buffer, owning its two moment buffers: the GPU twin of
/// [`crate::optim::AdamW`] (not an [`crate::optim::Optimizer`], for the reason given on [`WgpuSgd`]).
#[derive(Debug)]
pub struct WgpuAdamW {
    config: AdamWConfig,
    exp_avg: wgpu::Buffer,
    exp_avg_sq: wgpu::Buffer,
    steps: u64,
    len: usize,
}

impl WgpuAdamW {
    /// An optimiser for a flat buffer of `len` parameters (moments zeroed on the device); validates the
    /// configuration.
    pub fn new(ctx: &Wgpu, config: AdamWConfig, len: usize) -> Result<Self> {
        adamw_params(&config, len, 1)?;
        let (exp_avg, exp_avg_sq) = ctx.scoped(|| Ok((ctx.storage_buffer("moco adamw exp_avg", len as u64 * 4), ctx.storage_buffer("moco adamw exp_avg_sq", len as u64 * 4))))?;
        Ok(Self { config, exp_avg, exp_avg_sq, steps: 0, len })
    }
    /// One step: updates `params: [len]` from `grads: [len]` and the moments (bias corrections at step
    /// `steps() + 1`).
    pub fn step(&mut self, ctx: &Wgpu, params: &dyn AsGpuSlice, grads: &dyn AsGpuSlice) -> Result<()> {
        check_slice("adamw (wgpu)", "params", &params.as_gpu_slice(), self.len)?;
        adamw_step(ctx, params, &self.exp_avg, &self.exp_avg_sq, grads, &self.config, self.steps + 1)?;
        self.steps += 1;
        Ok(())
    }
    /// The hyperparameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }
    /// Parameters per step.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Always false (`len >= 1`).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// First moment `[len]`.
    pub fn exp_avg(&self) -> &wgpu::Buffer {
        &self.exp_avg
    }
    /// Second moment `[len]`.
    pub fn exp_avg_sq(&self) -> &wgpu::Buffer {
        &self.exp_avg_sq
    }
    /// The learning rate of the next step.
    pub fn lr(&self) -> f64 {
        self.config.lr
    }
    /// Sets the learning rate of the following steps; finite, >= 0.
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        check_lr("adamw", lr)?;
        self.config.lr = lr;
        Ok(())
    }
    /// Steps taken so far (torch's `state['step']`).
    pub fn steps(&self) -> u64 {
        self.steps
    }
    /// Sets the step count (when resuming, together with the state buffers).
    pub fn set_steps(&mut self, steps: u64) {
        self.steps = steps;
    }
    /// The state buffers by torch's names (`exp_avg`, `exp_avg_sq`), each `[len]`.
    pub fn state(&self) -> Vec<(&'static str, &wgpu::Buffer)> {
        vec![("exp_avg", &self.exp_avg), ("exp_avg_sq", &self.exp_avg_sq)]
    }
}

/// moco-v3's LARS on wgpu over one flat parameter buffer described by [`ParamSpans`], owning its momentum `mu`
/// and its [`LarsPlan`]: the GPU twin of [`crate::optim::Lars`] (not an [`crate::optim::Optimizer`], for the
/// reason given on [`WgpuSgd`]).
#[derive(Debug)]
pub struct WgpuLars {
    config: LarsConfig,
    plan: LarsPlan,
    mu: wgpu::Buffer,
    steps: u64,
}

impl WgpuLars {
    /// An optimiser for the flat buffer that `spans` tile (`mu` zeroed on the device); validates the
    /// configuration.
    pub fn new(ctx: &Wgpu, config: LarsConfig, spans: ParamSpans) -> Result<Self> {
        config.validate()?;
        let plan = LarsPlan::new(ctx, &spans)?;
        let mu = ctx.scoped(|| Ok(ctx.storage_buffer("moco lars mu", spans.len() as u64 * 4)))?;
        Ok(Self { config, plan, mu, steps: 0 })
    }
    /// One step (both passes): updates `params: [len]` from `grads: [len]` and `mu`.
    pub fn step(&mut self, ctx: &Wgpu, params: &dyn AsGpuSlice, grads: &dyn AsGpuSlice) -> Result<()> {
        lars_step(ctx, &self.plan, params, &self.mu, grads, &self.config)?;
        self.steps += 1;
        Ok(())
    }
    /// The hyperparameters.
    pub fn config(&self) -> &LarsConfig {
        &self.config
    }
    /// The tensors of the buffer.
    pub fn spans(&self) -> &ParamSpans {
        self.plan.spans()
    }
    /// The tables and norm buffers (per span `(||p||^2, ||dp||^2)` of the last step in [`LarsPlan::norms_sq`]).
    pub fn plan(&self) -> &LarsPlan {
        &self.plan
    }
    /// Momentum `mu: [len]`.
    pub fn mu(&self) -> &wgpu::Buffer {
        &self.mu
    }
    /// The learning rate of the next step.
    pub fn lr(&self) -> f64 {
        self.config.lr
    }
    /// Sets the learning rate of the following steps; finite, >= 0.
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        check_lr("lars", lr)?;
        self.config.lr = lr;
        Ok(())
    }
    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }
    /// Sets the step count (when resuming, together with `mu`).
    pub fn set_steps(&mut self, steps: u64) {
        self.steps = steps;
    }
    /// The state buffers by name (`mu`), each `[len]`.
    pub fn state(&self) -> Vec<(&'static str, &wgpu::Buffer)> {
        vec![("mu", &self.mu)]
    }
}


/// An optimiser on wgpu: [`WgpuSgd`], [`WgpuAdamW`] or [`WgpuLars`].
#[derive(Debug)]
pub enum WgpuOpt {
    /// SGD.
    Sgd(WgpuSgd),
    /// AdamW.
    AdamW(WgpuAdamW),
    /// LARS.
    Lars(WgpuLars),
}

impl WgpuOpt {
    /// The configuration.
    pub fn config(&self) -> OptimizerConfig {
        match self {
            WgpuOpt::Sgd(o) => OptimizerConfig::Sgd(*o.config()),
            WgpuOpt::AdamW(o) => OptimizerConfig::AdamW(*o.config()),
            WgpuOpt::Lars(o) => OptimizerConfig::Lars(*o.config()),
        }
    }
    /// Parameters per step.
    pub fn len(&self) -> usize {
        match self {
            WgpuOpt::Sgd(o) => o.len(),
            WgpuOpt::AdamW(o) => o.len(),
            WgpuOpt::Lars(o) => o.spans().len(),
        }
    }
    /// Always false (`len >= 1`).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The state buffers in [`OptimizerConfig::state_names`] order, each `[len]`.
    pub fn state(&self) -> Vec<&wgpu::Buffer> {
        let named = match self {
            WgpuOpt::Sgd(o) => o.state(),
            WgpuOpt::AdamW(o) => o.state(),
            WgpuOpt::Lars(o) => o.state(),
        };
        named.into_iter().map(|(_, b)| b).collect()
    }
}


impl super::Optim for Wgpu {
    type Opt = WgpuOpt;
    fn opt_new(&mut self, config: OptimizerConfig, spans: &ParamSpans) -> Result<WgpuOpt> {
        Ok(match config {
            OptimizerConfig::Sgd(c) => WgpuOpt::Sgd(WgpuSgd::new(self, c, spans.len())?),
            OptimizerConfig::AdamW(c) => WgpuOpt::AdamW(WgpuAdamW::new(self, c, spans.len())?),
            OptimizerConfig::Lars(c) => WgpuOpt::Lars(WgpuLars::new(self, c, spans.clone())?),
        })
    }
    fn opt_step(&mut self, opt: &mut WgpuOpt, params: &mut wgpu::Buffer, grads: &wgpu::Buffer, lr: f64) -> Result<()> {
        match opt {
            WgpuOpt::Sgd(o) => {
                o.set_lr(lr)?;
                o.step(self, params, grads)
            }
            WgpuOpt::AdamW(o) => {
                o.set_lr(lr)?;
                o.step(self, params, grads)
            }
            WgpuOpt::Lars(o) => {
                o.set_lr(lr)?;
                o.step(self, params, grads)
            }
        }
    }
    fn opt_steps(opt: &WgpuOpt) -> u64 {
        match opt {
            WgpuOpt::Sgd(o) => o.steps(),
            WgpuOpt::AdamW(o) => o.steps(),
            WgpuOpt::Lars(o) => o.steps(),
        }
    }
    fn opt_set_steps(opt: &mut WgpuOpt, steps: u64) {
        match opt {
            WgpuOpt::Sgd(o) => o.set_steps(steps),
            WgpuOpt::AdamW(o) => o.set_steps(steps),
            WgpuOpt::Lars(o) => o.set_steps(steps),
        }
    }
    fn opt_read_state(&self, opt: &WgpuOpt) -> Result<Vec<Vec<f32>>> {
        opt.state().into_iter().map(|b| self.read_elems::<f32>(b, opt.len())).collect()
    }
    fn opt_write_state(&mut self, opt: &mut WgpuOpt, state: &[Vec<f32>]) -> Result<()> {
        opt.config().check_state(opt.len(), state)?;
        for (b, src) in opt.state().into_iter().zip(state) {
            self.queue().write_buffer(b, 0, bytemuck::cast_slice(src));
        }
        Ok(())
    }
}
