//! Representation health on CUDA (`kernels/health.cu`): the launches of [`HealthPlan`] on the device's stream, the
//! plan's scratch allocated on the stream per call; nothing waits for the device.

use super::params::{drift_plan, HealthLaunch, HealthParams, HealthPlan};
use super::{DriftShape, Health, HealthShape, KERNELS};
use crate::device::cuda::{cfg, Cuda, Workspace};
use crate::error::Result;
use crate::ops::queue::cuda::{CudaQueue, CudaQueueStorage};
use cudarc::driver::{CudaFunction, CudaStream, CudaView, CudaViewMut, DeviceRepr, PushKernelArg};
use std::sync::Arc;

// SAFETY: #[repr(C)] plain-old-data of sixteen u32, the layout of `struct HealthParams` in kernels/health.cu.
unsafe impl DeviceRepr for HealthParams {}

/// The keys `health_logits` reads: a queue (f32, f16 or bf16 storage) or, in-batch, `k̂` itself.
enum Keys<'a, 'b> {
    Queue(&'a CudaQueue),
    InBatch(&'a CudaView<'b, f32>),
}

/// The CUDA function of a launch: the plan's entry point, with the keys' storage suffix for `health_logits`
/// (`health_logits_{f32,f16,bf16}`, the instantiations of the WGSL's `QUEUE_DTYPE` override).
fn kernel(stream: &Arc<CudaStream>, l: &HealthLaunch, keys: &Keys<'_, '_>) -> Result<CudaFunction> {
    let name = match (l.entry, keys) {
        ("health_logits", Keys::InBatch(_)) => "health_logits_f32",
        ("health_logits", Keys::Queue(q)) => match q.storage {
            CudaQueueStorage::F32(_) => "health_logits_f32",
            CudaQueueStorage::F16(_) => "health_logits_f16",
            CudaQueueStorage::BF16(_) => "health_logits_bf16",
        },
        (entry, _) => entry,
    };
    KERNELS.cuda_function(stream, name)
}

/// Writes `stats: [HEALTH_WORDS]` and `gram: [g, g]` from `q_hat, k_hat: [N, d]` and the queue `[K, d]` (f32, f16 or
/// bf16; see [`Health::health`]), asynchronously on `stream`.
pub fn health(stream: &Arc<CudaStream>, stats: &mut CudaViewMut<'_, f32>, gram: &mut CudaViewMut<'_, f32>, q_hat: &CudaView<'_, f32>, k_hat: &CudaView<'_, f32>, queue: &CudaQueue, shape: &HealthShape) -> Result<()> {
    health_in(stream, &mut Workspace::default(), stats, gram, q_hat, k_hat, queue, shape)
}

/// [`health`] with its partial sums in `ws`.
#[allow(clippy::too_many_arguments)]
fn health_in(stream: &Arc<CudaStream>, ws: &mut Workspace, stats: &mut CudaViewMut<'_, f32>, gram: &mut CudaViewMut<'_, f32>, q_hat: &CudaView<'_, f32>, k_hat: &CudaView<'_, f32>, queue: &CudaQueue, shape: &HealthShape) -> Result<()> {
    shape.check_kind(false)?;
    shape.check(stats.len(), gram.len(), q_hat.len(), k_hat.len(), queue.len())?;
    shape.check_queue(queue)?;
    run(stream, ws, stats, gram, q_hat, k_hat, Keys::Queue(queue), shape)
}

/// Writes `stats` and `gram` with MoCo v3's in-batch negatives (the rows `k̂_j`, `j ≠ i`, of `k_hat`; see
/// [`Health::health_in_batch`]), asynchronously on `stream`.
pub fn health_in_batch(stream: &Arc<CudaStream>, stats: &mut CudaViewMut<'_, f32>, gram: &mut CudaViewMut<'_, f32>, q_hat: &CudaView<'_, f32>, k_hat: &CudaView<'_, f32>, shape: &HealthShape) -> Result<()> {
    health_in_batch_in(stream, &mut Workspace::default(), stats, gram, q_hat, k_hat, shape)
}

/// [`health_in_batch`] with its partial sums in `ws`.
fn health_in_batch_in(stream: &Arc<CudaStream>, ws: &mut Workspace, stats: &mut CudaViewMut<'_, f32>, gram: &mut CudaViewMut<'_, f32>, q_hat: &CudaView<'_, f32>, k_hat: &CudaView<'_, f32>, shape: &HealthShape) -> Result<()> {
    shape.check_kind(true)?;
    shape.check(stats.len(), gram.len(), q_hat.len(), k_hat.len(), k_hat.len())?;
    run(stream, ws, stats, gram, q_hat, k_hat, Keys::InBatch(k_hat), shape)
}

/// The plan's launches (lengths checked).
fn run(stream: &Arc<CudaStream>, ws: &mut Workspace, stats: &mut CudaViewMut<'_, f32>, gram: &mut CudaViewMut<'_, f32>, q_hat: &CudaView<'_, f32>, k_hat: &CudaView<'_, f32>, keys: Keys<'_, '_>, shape: &HealthShape) -> Result<()> {
    let plan = HealthPlan::new(shape);
    let [mut dim_part, mut pair_part, mut logit_part] = ws.f32s.take(stream, [plan.dim_part, plan.pair_part, plan.logit_part])?;
    for l in &plan.launches {
        let f = kernel(stream, l, &keys)?;
        let (p, grid) = (&l.params, cfg(l.grid));
        match l.entry {
            // SAFETY: health_gram(HealthParams, float* gram [g*g], const float* x [N*d], float* pair_part
            // [ceil(N/16)^2]); reads guarded by row < rows and t < red (rows*row_stride + red*red_stride within N*d
            // by the plan), gram written at i, j < rows = g, pair_part at the block's index < grid x * grid y.
            "health_gram" => {
                unsafe { stream.launch_builder(&f).arg(p).arg(&mut *gram).arg(q_hat).arg(&mut pair_part).launch(grid) }?;
            }
            // SAFETY: health_dims(HealthParams, const float* q_hat [N*d], const float* k_hat [N*d], float* dim_part
            // [3d]); thread c < d reads column c and writes dim_part[3c..3c+3].
            "health_dims" => {
                unsafe { stream.launch_builder(&f).arg(p).arg(q_hat).arg(k_hat).arg(&mut dim_part).launch(grid) }?;
            }
            // SAFETY: health_logits_{f32,f16,bf16}(HealthParams, const float* q_hat [N*d], const T* queue [K*d], float*
            // logit_part [splits*N*2]); reads guarded by i < N, key < min(split end, K), c < d; block (x, y) writes
            // rows < N of split y < splits.
            // (health_logits_f16 / _bf16 read `const unsigned short*` bit patterns, one element per word)
            "health_logits" => {
                let mut b = stream.launch_builder(&f);
                b.arg(p).arg(q_hat);
                match &keys {
                    Keys::InBatch(k) => b.arg(*k),
                    Keys::Queue(q) => match &q.storage {
                        CudaQueueStorage::F32(k) => b.arg(k),
                        CudaQueueStorage::F16(k) | CudaQueueStorage::BF16(k) => b.arg(k),
                    },
                };
                unsafe { b.arg(&mut logit_part).launch(grid) }?;
            }
            // SAFETY: health_finish(HealthParams, float* stats [8], const float* dim_part [3d], const float* pair_part
            // [pair_blocks], const float* logit_part [splits*N*2]); one block, reads within those lengths, thread 0
            // writes the eight words.
            _ => {
                let (dim_part, pair_part, logit_part) = (dim_part.as_view(), pair_part.as_view(), logit_part.as_view());
                unsafe { stream.launch_builder(&f).arg(p).arg(&mut *stats).arg(&dim_part).arg(&pair_part).arg(&logit_part).launch(grid) }?;
            }
        }
    }
    Ok(())
}

/// `out[0] = ‖θ_k − θ_q‖ / ‖θ_q‖` over `theta_k, theta_q: [len]`, asynchronously on `stream`.
pub fn param_drift(stream: &Arc<CudaStream>, out: &mut CudaViewMut<'_, f32>, theta_k: &CudaView<'_, f32>, theta_q: &CudaView<'_, f32>, shape: &DriftShape) -> Result<()> {
    param_drift_in(stream, &mut Workspace::default(), out, theta_k, theta_q, shape)
}

/// [`param_drift`] with its partial sums in `ws`.
fn param_drift_in(stream: &Arc<CudaStream>, ws: &mut Workspace, out: &mut CudaViewMut<'_, f32>, theta_k: &CudaView<'_, f32>, theta_q: &CudaView<'_, f32>, shape: &DriftShape) -> Result<()> {
    shape.check(out.len(), theta_k.len(), theta_q.len())?;
    let ([partial, finish], part_len) = drift_plan(shape);
    let [mut part] = ws.f32s.take(stream, [part_len])?;
    let f = KERNELS.cuda_function(stream, partial.entry)?;
    // SAFETY: drift_partial(HealthParams, const float* theta_k [len], const float* theta_q [len], float* drift_part
    // [2 * blocks]); grid-stride reads below len, block b writes drift_part[2b..2b+2], b < blocks.
    unsafe { stream.launch_builder(&f).arg(&partial.params).arg(theta_k).arg(theta_q).arg(&mut part).launch(cfg(partial.grid)) }?;
    let f = KERNELS.cuda_function(stream, finish.entry)?;
    // SAFETY: drift_finish(HealthParams, float* out [1], const float* drift_part [2 * blocks]); one block, thread 0
    // writes out[0].
    let part = part.as_view();
    unsafe { stream.launch_builder(&f).arg(&finish.params).arg(&mut *out).arg(&part).launch(cfg(finish.grid)) }?;
    Ok(())
}

impl Health for Cuda {
    fn health(&mut self, mut stats: CudaViewMut<'_, f32>, mut gram: CudaViewMut<'_, f32>, q_hat: CudaView<'_, f32>, k_hat: CudaView<'_, f32>, queue: &CudaQueue, shape: &HealthShape) -> Result<()> {
        let (stream, ws) = self.workspace();
        health_in(&stream, ws, &mut stats, &mut gram, &q_hat, &k_hat, queue, shape)
    }

    fn health_in_batch(&mut self, mut stats: CudaViewMut<'_, f32>, mut gram: CudaViewMut<'_, f32>, q_hat: CudaView<'_, f32>, k_hat: CudaView<'_, f32>, shape: &HealthShape) -> Result<()> {
        let (stream, ws) = self.workspace();
        health_in_batch_in(&stream, ws, &mut stats, &mut gram, &q_hat, &k_hat, shape)
    }

    fn param_drift(&mut self, mut out: CudaViewMut<'_, f32>, theta_k: CudaView<'_, f32>, theta_q: CudaView<'_, f32>, shape: &DriftShape) -> Result<()> {
        let (stream, ws) = self.workspace();
        param_drift_in(&stream, ws, &mut out, &theta_k, &theta_q, shape)
    }
}
