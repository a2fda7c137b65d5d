//! Fused contrastive ops on wgpu (`shaders/infonce.wgsl`): normalised logits, streaming InfoNCE and MoCo v3. The
//! steps, the grid ([`StreamPlan`]) and the partial-buffer layout are those of the CUDA launcher; each op records
//! its dispatches (the row normalisation of [`crate::ops::normalize`] first) in one submission.

use super::params::{partial_kernel, InfoNceParams as Params, StreamPlan, GPU_TN};
use super::{check_stats, Infonce, InfoNceShape, InfoNceStats, LogitsShape, SymmetricShape, KERNELS, STATS_WORDS};
use crate::device::wgpu::{submit, Dispatch, GpuSlice, Wgpu};
use crate::device::{Device, Region};
use crate::error::{Error, Result};
use crate::ops::launch::grid_2d;
use crate::ops::normalize::NormalizeShape;
use crate::ops::queue::wgpu::WgpuQueue;

/// Elements of a view (f32 or u32 words).
fn elems(v: &GpuSlice<'_>) -> usize {
    v.len()
}

/// Scratch of one call (the device's, reused by later calls): normalised q and k and their inverse norms.
struct Scratch {
    q_hat: wgpu::Buffer,
    k_hat: wgpu::Buffer,
    q_inv: wgpu::Buffer,
    k_inv: wgpu::Buffer,
}

type Step<'a> = (Vec<u8>, Dispatch<'a>);

impl Scratch {
    fn new(ctx: &Wgpu, n: usize, c: usize) -> Self {
        Self {
            q_hat: ctx.scratch("moco q_hat", (n * c * 4) as u64),
            k_hat: ctx.scratch("moco k_hat", (n * c * 4) as u64),
            q_inv: ctx.scratch("moco q_inv_norm", (n * 4) as u64),
            k_inv: ctx.scratch("moco k_inv_norm", (n * 4) as u64),
        }
    }
    /// The two `normalize_rows` dispatches: q into q̂, k into k̂.
    fn normalize_steps<'a>(&'a self, ctx: &Wgpu, q: GpuSlice<'a>, k: GpuSlice<'a>, shape: &NormalizeShape) -> Vec<Step<'a>> {
        use crate::ops::normalize::wgpu::dispatch;
        vec![dispatch(ctx, GpuSlice::from(&self.q_hat), GpuSlice::from(&self.q_inv), q, shape), dispatch(ctx, GpuSlice::from(&self.k_hat), GpuSlice::from(&self.k_inv), k, shape)]
    }
}

fn run(ctx: &Wgpu, steps: Vec<Step>) -> Result<()> {
    let refs: Vec<(&[u8], Dispatch)> = steps.iter().map(|(p, d)| (&p[..], Dispatch { pipeline: d.pipeline.clone(), buffers: d.buffers.clone(), grid: d.grid })).collect();
    submit(ctx, &refs)
}

/// Normalised logits: `l_pos: [N]`, `l_neg: [N, K]` from `q, k: [N, C]` and the queue `[K, C]`; every view exactly
/// its length.
pub fn logits(ctx: &Wgpu, l_pos: GpuSlice<'_>, l_neg: GpuSlice<'_>, q: GpuSlice<'_>, k: GpuSlice<'_>, queue: &WgpuQueue, shape: &LogitsShape) -> Result<()> {
    let op = "logits";
    let (n, c, kk) = (shape.n, shape.c, shape.k);
    shape.check_inputs(elems(&q), elems(&k), queue.len())?;
    shape.check_queue(queue)?;
    shape.check_outputs(elems(&l_pos), elems(&l_neg))?;
    queue.check_bytes(op)?;
    if kk.div_ceil(64) > 65535 || n.div_ceil(16) > 65535 {
        return Err(Error::shape(op, "K <= 4194240 and N <= 1048560 for the materialising kernel", format!("N = {n}, K = {kk}")));
    }
    let s = Scratch::new(ctx, n, c);
    let p = Params::logits(n, c, kk);
    ctx.scoped(|| {
        let dt = Some(queue.code());
        let mut steps = s.normalize_steps(ctx, q, k, &NormalizeShape::new(n, c)?);
        steps.push((bytemuck::bytes_of(&p).to_vec(), Dispatch { pipeline: KERNELS.wgpu_pipeline(ctx, "positive_logits", dt), buffers: vec![(4, GpuSlice::from(&s.q_hat)), (5, GpuSlice::from(&s.k_hat)), (9, l_pos)], grid: ((n as u32).div_ceil(256), 1, 1) }));
        steps.push((bytemuck::bytes_of(&p).to_vec(), Dispatch { pipeline: KERNELS.wgpu_pipeline(ctx, "negative_logits", dt), buffers: vec![(4, GpuSlice::from(&s.q_hat)), (6, GpuSlice::from(queue.buffer())), (7, GpuSlice::from(queue.buffer())), (15, l_neg)], grid: ((kk as u32).div_ceil(64), (n as u32).div_ceil(16), 1) }));
        run(ctx, steps)
    })
}

/// Where one direction of a loss writes: `dq: [N, C]`, `row_loss: [N]`, `stats: [STATS_WORDS]`.
struct Outputs<'a> {
    dq: GpuSlice<'a>,
    row_loss: GpuSlice<'a>,
    stats: GpuSlice<'a>,
}

/// Scratch of the streaming loss: positive logits, ranks, the per-split partial states.
struct StreamScratch {
    s_pos: wgpu::Buffer,
    rank: wgpu::Buffer,
    partial: wgpu::Buffer,
}

impl StreamScratch {
    fn new(ctx: &Wgpu, plan: &StreamPlan, n: usize, c: usize) -> Self {
        Self { s_pos: ctx.scratch("moco s_pos", (n * 4) as u64), rank: ctx.scratch("moco rank", (n * 4) as u64), partial: ctx.scratch("moco partial", (plan.splits * n * (3 + c) * 4) as u64) }
    }
}

/// The streaming loss over prepared q̂, k̂ (positives) and a key set: partial, combine, reduce.
#[allow(clippy::too_many_arguments)]
fn stream_steps<'a>(ctx: &Wgpu, s: &'a Scratch, keys: GpuSlice<'a>, dtype: u32, m: usize, n: usize, c: usize, t: f32, loss_scale: f32, skip_diagonal: bool, ss: &'a StreamScratch, out: Outputs<'a>) -> Vec<Step<'a>> {
    let plan = StreamPlan::new(n, m, c);
    let p = Params::stream(&plan, n, m, c, t, loss_scale, skip_diagonal);
    let pb = bytemuck::bytes_of(&p).to_vec();
    let pipe = |e| KERNELS.wgpu_pipeline(ctx, e, Some(dtype));
    let (s_pos, partial, rank) = (GpuSlice::from(&ss.s_pos), GpuSlice::from(&ss.partial), GpuSlice::from(&ss.rank));
    vec![
        (pb.clone(), Dispatch { pipeline: pipe("positive_logits"), buffers: vec![(4, GpuSlice::from(&s.q_hat)), (5, GpuSlice::from(&s.k_hat)), (9, s_pos)], grid: ((n as u32).div_ceil(256), 1, 1) }),
        (pb.clone(), Dispatch { pipeline: pipe(partial_kernel(c)), buffers: vec![(4, GpuSlice::from(&s.q_hat)), (6, keys), (7, keys), (8, partial), (16, s_pos)], grid: (n.div_ceil(GPU_TN) as u32, plan.splits as u32, plan.slices as u32) }),
        (pb.clone(), Dispatch { pipeline: pipe("infonce_combine"), buffers: vec![(4, GpuSlice::from(&s.q_hat)), (5, GpuSlice::from(&s.k_hat)), (8, partial), (10, out.dq), (11, out.row_loss), (12, rank), (13, GpuSlice::from(&s.q_inv)), (16, s_pos)], grid: grid_2d(n) }),
        (pb, Dispatch { pipeline: pipe("infonce_reduce"), buffers: vec![(11, out.row_loss), (12, rank), (14, out.stats)], grid: (1, 1, 1) }),
    ]
}

fn check_grid(op: &'static str, n: usize) -> Result<()> {
    if n.div_ceil(GPU_TN) > 65535 {
        return Err(Error::shape(op, format!("N <= {}", 65535 * GPU_TN), format!("N = {n}")));
    }
    Ok(())
}

/// Fused streaming InfoNCE forward + backward, without waiting for the GPU: writes `dq: [N, C]`, `row_loss: [N]`
/// and `stats: [STATS_WORDS]` from `q, k: [N, C]` raw f32 and the queue `[K, C]`; every view exactly its length.
#[allow(clippy::too_many_arguments)]
pub fn infonce(ctx: &Wgpu, dq: GpuSlice<'_>, row_loss: GpuSlice<'_>, stats: GpuSlice<'_>, q: GpuSlice<'_>, k: GpuSlice<'_>, queue: &WgpuQueue, shape: &InfoNceShape) -> Result<()> {
    let op = "infonce";
    let (n, c) = (shape.n, shape.c);
    shape.check_inputs(elems(&q), elems(&k), queue.len())?;
    shape.check_queue(queue)?;
    shape.check_outputs(elems(&dq), elems(&row_loss))?;
    check_stats(op, elems(&stats), STATS_WORDS)?;
    queue.check_bytes(op)?;
    check_grid(op, n)?;
    let plan = StreamPlan::new(n, shape.k, c);
    let s = Scratch::new(ctx, n, c);
    let ss = StreamScratch::new(ctx, &plan, n, c);
    ctx.scoped(|| {
        let mut steps = s.normalize_steps(ctx, q, k, &NormalizeShape::new(n, c)?);
        steps.extend(stream_steps(ctx, &s, GpuSlice::from(queue.buffer()), queue.code(), shape.k, n, c, shape.temperature, 1.0, false, &ss, Outputs { dq, row_loss, stats }));
        run(ctx, steps)
    })
}

/// Fused MoCo v3 loss `ctr(q1, k2) + ctr(q2, k1)`, without waiting for the GPU: writes `dq1, dq2: [N, C]` and
/// `stats: [2 * STATS_WORDS]` (one block per direction).
///
/// Each direction's reduce writes a block of its own (WebGPU binds storage only at 256-byte aligned offsets, so
/// the second 16-byte block of `stats` cannot be bound), and the two are copied into `stats` at the end.
#[allow(clippy::too_many_arguments)]
pub fn moco_v3_loss(ctx: &Wgpu, dq1: GpuSlice<'_>, dq2: GpuSlice<'_>, stats: GpuSlice<'_>, q1: GpuSlice<'_>, q2: GpuSlice<'_>, k1: GpuSlice<'_>, k2: GpuSlice<'_>, shape: &SymmetricShape) -> Result<()> {
    let op = "moco_v3_loss";
    let (n, c, t) = (shape.n, shape.c, shape.temperature);
    shape.check(&[("q1", elems(&q1)), ("q2", elems(&q2)), ("k1", elems(&k1)), ("k2", elems(&k2)), ("dq1", elems(&dq1)), ("dq2", elems(&dq2))])?;
    check_stats(op, elems(&stats), 2 * STATS_WORDS)?;
    check_grid(op, n)?;
    // both halves in one submission (dispatches run in order, so they share the scratch)
    let plan = StreamPlan::new(n, n, c);
    let s = Scratch::new(ctx, n, c);
    let ss = StreamScratch::new(ctx, &plan, n, c);
    let row_loss = ctx.scratch("moco row_loss", (n * 4) as u64);
    let blocks = ["moco v3 stats 1", "moco v3 stats 2"].map(|name| ctx.scratch(name, (STATS_WORDS * 4) as u64));
    ctx.scoped(|| {
        let mut steps = Vec::new();
        let norm = NormalizeShape::new(n, c)?;
        for ((q, k, dq), st) in [(q1, k2, dq1), (q2, k1, dq2)].into_iter().zip(&blocks) {
            steps.extend(s.normalize_steps(ctx, q, k, &norm));
            steps.extend(stream_steps(ctx, &s, GpuSlice::from(&s.k_hat), 0, n, n, c, t, 2.0 * t, true, &ss, Outputs { dq, row_loss: GpuSlice::from(&row_loss), stats: GpuSlice::from(st) }));
        }
        run(ctx, steps)?;
        ctx.encode(|enc| {
            for (i, b) in blocks.iter().enumerate() {
                enc.copy_buffer_to_buffer(b, 0, stats.buffer(), stats.offset() + (i * STATS_WORDS * 4) as u64, (STATS_WORDS * 4) as u64);
            }
        })
    })
}

/// Reads a stats block written by [`infonce`] (waits for the GPU).
pub fn read_stats(ctx: &Wgpu, stats: &wgpu::Buffer) -> Result<InfoNceStats> {
    InfoNceStats::from_words(&ctx.read_index(stats, Region::new(0, STATS_WORDS))?)
}

impl Infonce for Wgpu {
    fn infonce(&mut self, dq: GpuSlice<'_>, row_loss: GpuSlice<'_>, stats: GpuSlice<'_>, q: GpuSlice<'_>, k: GpuSlice<'_>, queue: &WgpuQueue, shape: &InfoNceShape) -> Result<()> {
        infonce(self, dq, row_loss, stats, q, k, queue, shape)
    }
    fn logits(&mut self, l_pos: GpuSlice<'_>, l_neg: GpuSlice<'_>, q: GpuSlice<'_>, k: GpuSlice<'_>, queue: &WgpuQueue, shape: &LogitsShape) -> Result<()> {
        logits(self, l_pos, l_neg, q, k, queue, shape)
    }
    fn moco_v3_loss(&mut self, dq1: GpuSlice<'_>, dq2: GpuSlice<'_>, stats: GpuSlice<'_>, q1: GpuSlice<'_>, q2: GpuSlice<'_>, k1: GpuSlice<'_>, k2: GpuSlice<'_>, shape: &SymmetricShape) -> Result<()> {
        moco_v3_loss(self, dq1, dq2, stats, q1, q2, k1, k2, shape)
    }
}
