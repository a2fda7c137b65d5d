//! Representation health on wgpu (`shaders/health.wgsl`): the launches of [`HealthPlan`] in one submission, with the
//! scratch of the plan allocated per call; nothing waits for the GPU.

use super::params::{drift_plan, HealthLaunch, HealthPlan};
use super::{DriftShape, Health, HealthShape, KERNELS};
use crate::device::wgpu::{GpuSlice, Launch, Wgpu};
use crate::error::Result;
use crate::ops::queue::wgpu::WgpuQueue;
use crate::ops::queue::QueueDType;

fn launch<'a>(l: &HealthLaunch, buffers: Vec<(u32, GpuSlice<'a>)>) -> Launch<'a> {
    Launch::new(l.entry, &l.params, buffers, l.grid)
}

/// Writes `stats: [HEALTH_WORDS]` and `gram: [g, g]` from `q_hat, k_hat: [N, d]` and the queue `[K, d]` (f32, f16 or bf16) (see
/// [`Health::health`]); every view exactly its length.
pub fn health(ctx: &Wgpu, stats: GpuSlice<'_>, gram: GpuSlice<'_>, q_hat: GpuSlice<'_>, k_hat: GpuSlice<'_>, queue: &WgpuQueue, shape: &HealthShape) -> Result<()> {
    shape.check_kind(false)?;
    shape.check(stats.len(), gram.len(), q_hat.len(), k_hat.len(), queue.len())?;
    shape.check_queue(queue)?;
    queue.check_bytes("health")?;
    run(ctx, stats, gram, q_hat, k_hat, GpuSlice::from(queue.buffer()), queue.code(), shape)
}

/// Writes `stats` and `gram` with MoCo v3's in-batch negatives (the rows `k̂_j`, `j ≠ i`, of `k_hat`; see
/// [`Health::health_in_batch`]); every view exactly its length.
pub fn health_in_batch(ctx: &Wgpu, stats: GpuSlice<'_>, gram: GpuSlice<'_>, q_hat: GpuSlice<'_>, k_hat: GpuSlice<'_>, shape: &HealthShape) -> Result<()> {
    shape.check_kind(true)?;
    shape.check(stats.len(), gram.len(), q_hat.len(), k_hat.len(), k_hat.len())?;
    run(ctx, stats, gram, q_hat, k_hat, k_hat, QueueDType::F32.code(), shape)
}

/// The plan's launches against `keys` stored as `dtype` (lengths checked).
#[allow(clippy::too_many_arguments)]
fn run(ctx: &Wgpu, stats: GpuSlice<'_>, gram: GpuSlice<'_>, q_hat: GpuSlice<'_>, k_hat: GpuSlice<'_>, keys: GpuSlice<'_>, dtype: u32, shape: &HealthShape) -> Result<()> {
    let plan = HealthPlan::new(shape);
    let dim_part = ctx.scratch("moco health dim_part", (plan.dim_part * 4) as u64);
    let pair_part = ctx.scratch("moco health pair_part", (plan.pair_part * 4) as u64);
    let logit_part = ctx.scratch("moco health logit_part", (plan.logit_part * 4) as u64);
    let (dims, pairs, logits) = (GpuSlice::from(&dim_part), GpuSlice::from(&pair_part), GpuSlice::from(&logit_part));
    let launches = plan
        .launches
        .iter()
        .map(|l| match l.entry {
            "health_gram" => launch(l, vec![(2, gram), (3, q_hat), (7, pairs)]),
            "health_dims" => launch(l, vec![(3, q_hat), (4, k_hat), (6, dims)]),
            // the queue bound twice, as f32 words and as 16-bit pairs; the pipeline's QUEUE_DTYPE reads one
            "health_logits" => launch(l, vec![(3, q_hat), (5, keys), (13, keys), (8, logits)]).with_queue_dtype(dtype),
            _ => launch(l, vec![(1, stats), (6, dims), (7, pairs), (8, logits)]),
        })
        .collect();
    ctx.run(&KERNELS, launches)
}

/// `out[0] = ‖θ_k − θ_q‖ / ‖θ_q‖` over `theta_k, theta_q: [len]`; every view exactly its length.
pub fn param_drift(ctx: &Wgpu, out: GpuSlice<'_>, theta_k: GpuSlice<'_>, theta_q: GpuSlice<'_>, shape: &DriftShape) -> Result<()> {
    shape.check(out.len(), theta_k.len(), theta_q.len())?;
    let ([partial, finish], part_len) = drift_plan(shape);
    let part = ctx.scratch("moco drift_part", (part_len * 4) as u64);
    let p = GpuSlice::from(&part);
    ctx.run(&KERNELS, vec![launch(&partial, vec![(10, theta_k), (11, theta_q), (12, p)]), launch(&finish, vec![(9, out), (12, p)])])
}

impl Health for Wgpu {
    fn health(&mut self, stats: GpuSlice<'_>, gram: GpuSlice<'_>, q_hat: GpuSlice<'_>, k_hat: GpuSlice<'_>, queue: &WgpuQueue, shape: &HealthShape) -> Result<()> {
        health(self, stats, gram, q_hat, k_hat, queue, shape)
    }

    fn health_in_batch(&mut self, stats: GpuSlice<'_>, gram: GpuSlice<'_>, q_hat: GpuSlice<'_>, k_hat: GpuSlice<'_>, shape: &HealthShape) -> Result<()> {
        health_in_batch(self, stats, gram, q_hat, k_hat, shape)
    }

    fn param_drift(&mut self, out: GpuSlice<'_>, theta_k: GpuSlice<'_>, theta_q: GpuSlice<'_>, shape: &DriftShape) -> Result<()> {
        param_drift(self, out, theta_k, theta_q, shape)
    }
}
