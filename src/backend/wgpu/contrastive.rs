//! Fused contrastive ops on wgpu (`shaders/contrastive.wgsl`): normalised logits, streaming InfoNCE and MoCo v3.

use super::context::{GpuSlice, grid_2d, sources, submit, Dispatch, WgpuContext};
use super::queue::WgpuQueue;
use crate::backend::plan::{KernelParams as Params, StreamPlan, GPU_TN};
use crate::backend::cpu::InfoNceStats;
use crate::error::{Error, Result};
use crate::shape::{InfoNceShape, LogitsShape, SymmetricShape};

pub(crate) fn normalize_params(rows: u32, c: u32) -> Params {
    Params::normalize(rows as usize, c as usize)
}

fn check_f32(op: &'static str, name: &str, buf: &wgpu::Buffer, elems: usize) -> Result<()> {
    if buf.size() < (elems * 4) as u64 {
        return Err(Error::shape(op, format!("{name} buffer of at least {} bytes ({elems} f32)", elems * 4), format!("{} bytes", buf.size())));
    }
    Ok(())
}

/// Output buffers of [`infonce`]: `dq: [N, C]`, `row_loss: [N]`, and `stats` (16 bytes: loss f32, top1 u32, top5 u32, pad).
#[derive(Debug)]
pub struct InfoNceBuffers {
    /// Gradient w.r.t. raw q, `[N, C]` f32.
    pub dq: wgpu::Buffer,
    /// Per-row loss `[N]` f32.
    pub row_loss: wgpu::Buffer,
    /// Mean loss and accuracy counts, 16 bytes.
    pub stats: wgpu::Buffer,
}

impl InfoNceBuffers {
    /// Allocates the outputs for batch `n`, dimension `c`.
    pub fn new(ctx: &WgpuContext, n: usize, c: usize) -> Self {
        Self { dq: ctx.storage_buffer("moco dq", (n * c * 4) as u64), row_loss: ctx.storage_buffer("moco row_loss", (n * 4) as u64), stats: ctx.storage_buffer("moco stats", 16) }
    }
    /// Reads the stats block back (waits for the GPU).
    pub fn read_stats(&self, ctx: &WgpuContext) -> Result<InfoNceStats> {
        let raw: Vec<u32> = ctx.read(&self.stats, 3)?;
        Ok(InfoNceStats { loss: f32::from_bits(raw[0]), top1: raw[1], top5: raw[2] })
    }
}

/// Normalised logits: `l_pos: [N]`, `l_neg: [N, K]` from `q, k: [N, C]` and the queue `[K, C]`.
pub fn logits(ctx: &WgpuContext, l_pos: &wgpu::Buffer, l_neg: &wgpu::Buffer, q: &wgpu::Buffer, k: &wgpu::Buffer, queue: &WgpuQueue, shape: &LogitsShape) -> Result<()> {
    let op = "logits";
    let (n, c, kk) = (shape.n, shape.c, shape.k);
    shape.check_inputs(n * c, n * c, queue.len)?;
    shape.check_queue((queue.k, queue.c))?;
    check_f32(op, "q", q, n * c)?;
    check_f32(op, "k", k, n * c)?;
    check_f32(op, "l_pos", l_pos, n)?;
    check_f32(op, "l_neg", l_neg, n * kk)?;
    queue.check_bytes(op)?;
    if kk.div_ceil(64) > 65535 || n.div_ceil(16) > 65535 {
        return Err(Error::shape(op, "K <= 4194240 and N <= 1048560 for the materialising kernel", format!("N = {n}, K = {kk}")));
    }
    let s = Scratch::new(ctx, n, c);
    let p = Params::logits(n, c, kk);
    ctx.scoped(|| {
        let dt = Some(queue.code());
        let mut steps = s.normalize_steps(ctx, q, k, n as u32, c as u32);
        steps.push((bytemuck::bytes_of(&p).to_vec(), Dispatch { pipeline: ctx.pipeline("contrastive", sources::CONTRASTIVE, "positive_logits", dt), buffers: vec![(4, GpuSlice::from(&s.q_hat)), (5, GpuSlice::from(&s.k_hat)), (9, GpuSlice::from(l_pos))], grid: ((n as u32).div_ceil(256), 1, 1) }));
        steps.push((bytemuck::bytes_of(&p).to_vec(), Dispatch { pipeline: ctx.pipeline("contrastive", sources::CONTRASTIVE, "negative_logits", dt), buffers: vec![(4, GpuSlice::from(&s.q_hat)), (6, GpuSlice::from(&queue.buffer)), (7, GpuSlice::from(&queue.buffer)), (15, GpuSlice::from(l_neg))], grid: ((kk as u32).div_ceil(64), (n as u32).div_ceil(16), 1) }));
        run(ctx, steps);
        Ok(())
    })
}

/// Per-call scratch: normalised q and k and their inverse norms.
struct Scratch {
    q_hat: wgpu::Buffer,
    k_hat: wgpu::Buffer,
    q_inv: wgpu::Buffer,
    k_inv: wgpu::Buffer,
}

impl Scratch {
    fn new(ctx: &WgpuContext, n: usize, c: usize) -> Self {
        Self {
            q_hat: ctx.storage_buffer("moco q_hat", (n * c * 4) as u64),
            k_hat: ctx.storage_buffer("moco k_hat", (n * c * 4) as u64),
            q_inv: ctx.storage_buffer("moco q_inv_norm", (n * 4) as u64),
            k_inv: ctx.storage_buffer("moco k_inv_norm", (n * 4) as u64),
        }
    }
    fn normalize_steps<'a>(&'a self, ctx: &WgpuContext, q: &'a wgpu::Buffer, k: &'a wgpu::Buffer, n: u32, c: u32) -> Vec<(Vec<u8>, Dispatch<'a>)> {
        let p = bytemuck::bytes_of(&normalize_params(n, c)).to_vec();
        let pipe = ctx.pipeline("contrastive", sources::CONTRASTIVE, "normalize_rows", Some(0));
        vec![
            (p.clone(), Dispatch { pipeline: pipe.clone(), buffers: vec![(1, GpuSlice::from(q)), (2, GpuSlice::from(&self.q_hat)), (3, GpuSlice::from(&self.q_inv))], grid: grid_2d(n) }),
            (p, Dispatch { pipeline: pipe, buffers: vec![(1, GpuSlice::from(k)), (2, GpuSlice::from(&self.k_hat)), (3, GpuSlice::from(&self.k_inv))], grid: grid_2d(n) }),
        ]
    }
}

fn run(ctx: &WgpuContext, steps: Vec<(Vec<u8>, Dispatch)>) {
    let refs: Vec<(&[u8], Dispatch)> = steps.iter().map(|(p, d)| (&p[..], Dispatch { pipeline: d.pipeline.clone(), buffers: d.buffers.clone(), grid: d.grid })).collect();
    submit(ctx, &refs);
}

/// The streaming loss over prepared q̂, k̂ (positives) and a key set: partial, combine, reduce.
#[allow(clippy::too_many_arguments)]
fn stream_steps<'a>(ctx: &WgpuContext, s: &'a Scratch, keys: &'a wgpu::Buffer, dtype: u32, m: usize, n: usize, c: usize, t: f32, loss_scale: f32, skip_diagonal: bool, s_pos: &'a wgpu::Buffer, partial: &'a wgpu::Buffer, rank: &'a wgpu::Buffer, out: &'a InfoNceBuffers) -> Vec<(Vec<u8>, Dispatch<'a>)> {
    let plan = StreamPlan::new(n, m, c);
    let p = Params::stream(&plan, n, m, c, t, loss_scale, skip_diagonal);
    let pb = bytemuck::bytes_of(&p).to_vec();
    let pipe = |e| ctx.pipeline("contrastive", sources::CONTRASTIVE, e, Some(dtype));
    vec![
        (pb.clone(), Dispatch { pipeline: pipe("positive_logits"), buffers: vec![(4, GpuSlice::from(&s.q_hat)), (5, GpuSlice::from(&s.k_hat)), (9, GpuSlice::from(s_pos))], grid: ((n as u32).div_ceil(256), 1, 1) }),
        (pb.clone(), Dispatch { pipeline: pipe("infonce_partial"), buffers: vec![(4, GpuSlice::from(&s.q_hat)), (6, GpuSlice::from(keys)), (7, GpuSlice::from(keys)), (8, GpuSlice::from(partial)), (16, GpuSlice::from(s_pos))], grid: (n.div_ceil(GPU_TN) as u32, plan.splits as u32, plan.slices as u32) }),
        (pb.clone(), Dispatch { pipeline: pipe("infonce_combine"), buffers: vec![(4, GpuSlice::from(&s.q_hat)), (5, GpuSlice::from(&s.k_hat)), (8, GpuSlice::from(partial)), (10, GpuSlice::from(&out.dq)), (11, GpuSlice::from(&out.row_loss)), (12, GpuSlice::from(rank)), (13, GpuSlice::from(&s.q_inv)), (16, GpuSlice::from(s_pos))], grid: grid_2d(n as u32) }),
        (pb, Dispatch { pipeline: pipe("infonce_reduce"), buffers: vec![(11, GpuSlice::from(&out.row_loss)), (12, GpuSlice::from(rank)), (14, GpuSlice::from(&out.stats))], grid: (1, 1, 1) }),
    ]
}

fn check_grid(op: &'static str, n: usize, plan: &StreamPlan) -> Result<()> {
    if n.div_ceil(GPU_TN) > 65535 {
        return Err(Error::shape(op, format!("N <= {}", 65535 * GPU_TN), format!("N = {n}")));
    }
    let _ = plan;
    Ok(())
}

/// Fused streaming InfoNCE forward + backward; writes `out` without waiting for the GPU.
/// `q, k: [N, C]` raw f32, queue `[K, C]`. Read the scalars with [`InfoNceBuffers::read_stats`].
pub fn infonce_async(ctx: &WgpuContext, out: &InfoNceBuffers, q: &wgpu::Buffer, k: &wgpu::Buffer, queue: &WgpuQueue, shape: &InfoNceShape) -> Result<()> {
    let op = "infonce";
    let (n, c) = (shape.n, shape.c);
    shape.check_inputs(n * c, n * c, queue.len)?;
    shape.check_queue((queue.k, queue.c))?;
    check_f32(op, "q", q, n * c)?;
    check_f32(op, "k", k, n * c)?;
    check_f32(op, "dq", &out.dq, n * c)?;
    check_f32(op, "row_loss", &out.row_loss, n)?;
    check_f32(op, "stats", &out.stats, 4)?;
    queue.check_bytes(op)?;
    let plan = StreamPlan::new(n, shape.k, c);
    check_grid(op, n, &plan)?;
    let s = Scratch::new(ctx, n, c);
    let s_pos = ctx.storage_buffer("moco s_pos", (n * 4) as u64);
    let rank = ctx.storage_buffer("moco rank", (n * 4) as u64);
    let partial = ctx.storage_buffer("moco partial", (plan.splits * n * (3 + c) * 4) as u64);
    ctx.scoped(|| {
        let mut steps = s.normalize_steps(ctx, q, k, n as u32, c as u32);
        steps.extend(stream_steps(ctx, &s, &queue.buffer, queue.code(), shape.k, n, c, shape.temperature, 1.0, false, &s_pos, &partial, &rank, out));
        run(ctx, steps);
        Ok(())
    })
}

/// [`infonce_async`], then waits and returns the mean loss and acc@1/acc@5 counts.
pub fn infonce(ctx: &WgpuContext, out: &InfoNceBuffers, q: &wgpu::Buffer, k: &wgpu::Buffer, queue: &WgpuQueue, shape: &InfoNceShape) -> Result<InfoNceStats> {
    infonce_async(ctx, out, q, k, queue, shape)?;
    out.read_stats(ctx)
}

/// Fused MoCo v3 loss `ctr(q1, k2) + ctr(q2, k1)`: writes `dq1, dq2: [N, C]` and returns the loss (waits).
#[allow(clippy::too_many_arguments)]
pub fn moco_v3_loss(ctx: &WgpuContext, dq1: &wgpu::Buffer, dq2: &wgpu::Buffer, q1: &wgpu::Buffer, q2: &wgpu::Buffer, k1: &wgpu::Buffer, k2: &wgpu::Buffer, shape: &SymmetricShape) -> Result<f32> {
    let op = "moco_v3_loss";
    let (n, c, t) = (shape.n, shape.c, shape.temperature);
    for (name, b) in [("q1", q1), ("q2", q2), ("k1", k1), ("k2", k2), ("dq1", dq1), ("dq2", dq2)] {
        check_f32(op, name, b, n * c)?;
    }
    let plan = StreamPlan::new(n, n, c);
    check_grid(op, n, &plan)?;
    // both halves in one submission (dispatches run in order, so they share the scratch), then one wait
    let s = Scratch::new(ctx, n, c);
    let s_pos = ctx.storage_buffer("moco s_pos", (n * 4) as u64);
    let rank = ctx.storage_buffer("moco rank", (n * 4) as u64);
    let partial = ctx.storage_buffer("moco partial", (plan.splits * n * (3 + c) * 4) as u64);
    let row_loss = ctx.storage_buffer("moco row_loss", (n * 4) as u64);
    let outs = [dq1, dq2].map(|dq| InfoNceBuffers { dq: dq.clone(), row_loss: row_loss.clone(), stats: ctx.storage_buffer("moco stats", 16) });
    ctx.scoped(|| {
        let mut steps = Vec::new();
        for ((q, k), out) in [(q1, k2), (q2, k1)].into_iter().zip(&outs) {
            steps.extend(s.normalize_steps(ctx, q, k, n as u32, c as u32));
            steps.extend(stream_steps(ctx, &s, &s.k_hat, 0, n, n, c, t, 2.0 * t, true, &s_pos, &partial, &rank, out));
        }
        run(ctx, steps);
        Ok(())
    })?;
    Ok(outs[0].read_stats(ctx)?.loss + outs[1].read_stats(ctx)?.loss)
}