//! Fused contrastive ops on CUDA (`kernels/contrastive.cu`): normalised logits, streaming InfoNCE and MoCo v3.
//! The steps, the grid (`StreamPlan`) and the partial-buffer layout are those of the wgpu backend.

use super::context::{cfg, function, MAX_GRID_X, MAX_GRID_YZ};
use super::queue::{CudaQueue, CudaQueueStorage};
use crate::backend::QueueDims;
use crate::backend::cpu::InfoNceStats;
use crate::backend::plan::{negative_logits_grid, positive_grid, row_grid, KernelParams as Params, StreamPlan, GPU_TN, REDUCE_GRID};
use crate::error::{Error, Result};
use crate::shape::{InfoNceShape, LogitsShape, SymmetricShape};
use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, DeviceRepr, PushKernelArg};
use std::sync::Arc;

// SAFETY: #[repr(C)] plain-old-data of 4-byte fields, the layout of `struct Params` in kernels/contrastive.cu.
unsafe impl DeviceRepr for Params {}
const _: () = assert!(std::mem::size_of::<Params>() == 48 && std::mem::align_of::<Params>() == 4);

/// Words of the stats buffer written by `infonce_reduce`: loss (f32 bits), top1, top5, padding.
pub const STATS_WORDS: usize = 4;

fn contrastive(stream: &Arc<CudaStream>, name: &'static str) -> Result<CudaFunction> {
    function(stream, "contrastive.cu", name)
}

fn check_len(op: &'static str, name: &str, got: usize, expected: usize) -> Result<()> {
    if got != expected {
        return Err(Error::shape(op, format!("{name} of {expected} elements"), format!("{got} elements")));
    }
    Ok(())
}

/// `x_hat[r, :] = x[r, :] / max(||x[r, :]||, 1e-12)` and `inv_norm[r] = 1 / max(||x[r, :]||, 1e-12)`.
/// `x, x_hat: [rows, C]`, `inv_norm: [rows]`. Launches `normalize_rows`, one 256-thread block per row.
pub fn normalize_rows(stream: &Arc<CudaStream>, x_hat: &mut CudaSlice<f32>, inv_norm: &mut CudaSlice<f32>, x: &CudaSlice<f32>, rows: usize, c: usize) -> Result<()> {
    crate::shape::check_normalize(rows, c, x.len(), x_hat.len(), inv_norm.len())?;
    normalize(stream, x_hat, inv_norm, x, rows, c)
}

/// [`normalize_rows`] without the length checks (callers have validated).
pub(crate) fn normalize(stream: &Arc<CudaStream>, x_hat: &mut CudaSlice<f32>, inv_norm: &mut CudaSlice<f32>, x: &CudaSlice<f32>, rows: usize, c: usize) -> Result<()> {
    if rows == 0 {
        return Ok(());
    }
    let p = Params::normalize(rows, c);
    let f = contrastive(stream, "normalize_rows")?;
    // SAFETY: normalize_rows(Params, const float* x [rows*C], float* x_hat [rows*C], float* inv_norm [rows]);
    // block r < rows reads and writes row r only; the lengths were checked by the caller.
    unsafe { stream.launch_builder(&f).arg(&p).arg(x).arg(x_hat).arg(inv_norm).launch(cfg(row_grid(rows))) }?;
    Ok(())
}

/// Per-call scratch: normalised q and k and their inverse norms.
struct Scratch {
    q_hat: CudaSlice<f32>,
    k_hat: CudaSlice<f32>,
    q_inv: CudaSlice<f32>,
    k_inv: CudaSlice<f32>,
}

impl Scratch {
    /// Allocates the scratch and normalises `q, k: [N, C]` into it.
    fn normalized(stream: &Arc<CudaStream>, q: &CudaSlice<f32>, k: &CudaSlice<f32>, n: usize, c: usize) -> Result<Self> {
        let mut s = Self { q_hat: stream.alloc_zeros(n * c)?, k_hat: stream.alloc_zeros(n * c)?, q_inv: stream.alloc_zeros(n)?, k_inv: stream.alloc_zeros(n)? };
        normalize(stream, &mut s.q_hat, &mut s.q_inv, q, n, c)?;
        normalize(stream, &mut s.k_hat, &mut s.k_inv, k, n, c)?;
        Ok(s)
    }
}

/// `s_pos[i] = q̂_i · k̂_i * inv_t`: `positive_logits`, one thread per row.
fn positive(stream: &Arc<CudaStream>, p: &Params, q_hat: &CudaSlice<f32>, k_hat: &CudaSlice<f32>, s_pos: &mut CudaSlice<f32>, n: usize) -> Result<()> {
    let f = contrastive(stream, "positive_logits")?;
    // SAFETY: positive_logits(Params, const float* q_hat [N*C], const float* k_hat [N*C], float* s_pos [N]);
    // thread i < N reads row i of q_hat and k_hat and writes s_pos[i]; all buffers hold N rows.
    unsafe { stream.launch_builder(&f).arg(p).arg(q_hat).arg(k_hat).arg(s_pos).launch(cfg(positive_grid(n))) }?;
    Ok(())
}

/// Normalised logits: `l_pos: [N]`, `l_neg: [N, K]` from raw `q, k: [N, C]` and the queue `[K, C]` (used as stored).
/// Runs asynchronously on `stream`.
///
/// Launches `normalize_rows` twice (grid N), `positive_logits` (grid ceil(N/256)) and `negative_logits_{f32,f16,bf16}`
/// (grid (ceil(K/64), ceil(N/16)), a 16 x 64 tile per block), 256 threads per block.
#[allow(clippy::too_many_arguments)]
pub fn logits(stream: &Arc<CudaStream>, l_pos: &mut CudaSlice<f32>, l_neg: &mut CudaSlice<f32>, q: &CudaSlice<f32>, k: &CudaSlice<f32>, queue: &CudaQueue, shape: &LogitsShape) -> Result<()> {
    let op = "logits";
    shape.check_inputs(q.len(), k.len(), queue.len())?;
    shape.check_queue((queue.k(), queue.c()))?;
    shape.check_outputs(l_pos.len(), l_neg.len())?;
    let (n, c, kk) = (shape.n, shape.c, shape.k);
    if kk.div_ceil(64) > MAX_GRID_X || n.div_ceil(16) > MAX_GRID_YZ {
        return Err(Error::shape(op, format!("N <= {} for the materialising kernel", MAX_GRID_YZ * 16), format!("N = {n}, K = {kk}")));
    }
    let s = Scratch::normalized(stream, q, k, n, c)?;
    let p = Params::logits(n, c, kk);
    positive(stream, &p, &s.q_hat, &s.k_hat, l_pos, n)?;
    let grid = cfg(negative_logits_grid(n, kk));
    match &queue.storage {
        CudaQueueStorage::F32(keys) => {
            let f = contrastive(stream, "negative_logits_f32")?;
            // SAFETY: negative_logits_f32(Params, const float* q_hat [N*C], const float* keys [K*C], float* l_neg
            // [N*K]); reads and writes are guarded by gi < N, gj < K, gc < C; lengths checked above.
            unsafe { stream.launch_builder(&f).arg(&p).arg(&s.q_hat).arg(keys).arg(l_neg).launch(grid) }?;
        }
        CudaQueueStorage::F16(keys) | CudaQueueStorage::BF16(keys) => {
            let name = if queue.code() == 1 { "negative_logits_f16" } else { "negative_logits_bf16" };
            let f = contrastive(stream, name)?;
            // SAFETY: negative_logits_{f16,bf16}(Params, const float* q_hat [N*C], const unsigned short* keys
            // [K*C], float* l_neg [N*K]); accesses guarded by gi < N, gj < K, gc < C; lengths checked above.
            unsafe { stream.launch_builder(&f).arg(&p).arg(&s.q_hat).arg(keys).arg(l_neg).launch(grid) }?;
        }
    }
    Ok(())
}

/// The key set streamed by the loss: the queue (any dtype) or, for MoCo v3, the normalised keys.
enum Keys<'a> {
    F32(&'a CudaSlice<f32>),
    F16(&'a CudaSlice<u16>),
    BF16(&'a CudaSlice<u16>),
}

impl<'a> Keys<'a> {
    fn of(queue: &'a CudaQueue) -> Self {
        match &queue.storage {
            CudaQueueStorage::F32(b) => Keys::F32(b),
            CudaQueueStorage::F16(b) => Keys::F16(b),
            CudaQueueStorage::BF16(b) => Keys::BF16(b),
        }
    }
}

fn check_grid(op: &'static str, n: usize, plan: &StreamPlan) -> Result<()> {
    if n.div_ceil(GPU_TN) > MAX_GRID_X || plan.splits > MAX_GRID_YZ || plan.slices > MAX_GRID_YZ {
        return Err(Error::shape(op, format!("C <= {} (channel slices per launch)", MAX_GRID_YZ * plan.c_slice), format!("N = {n}, {} slices", plan.slices)));
    }
    Ok(())
}

/// The streaming loss over prepared q̂, k̂ (positives) and a key set `[m, C]`: `positive_logits`, `infonce_partial_*`
/// (grid (ceil(N/32), splits, slices) of [`StreamPlan`]), `infonce_combine` (grid N) and `infonce_reduce` (one block).
#[allow(clippy::too_many_arguments)]
fn stream_loss(stream: &Arc<CudaStream>, s: &Scratch, keys: Keys, m: usize, n: usize, c: usize, t: f32, loss_scale: f32, skip_diagonal: bool, dq: &mut CudaSlice<f32>, row_loss: &mut CudaSlice<f32>, stats: &mut CudaSlice<u32>) -> Result<()> {
    let plan = StreamPlan::new(n, m, c);
    let p = Params::stream(&plan, n, m, c, t, loss_scale, skip_diagonal);
    let mut s_pos = stream.alloc_zeros::<f32>(n)?;
    let mut rank = stream.alloc_zeros::<u32>(n)?;
    let mut partial = stream.alloc_zeros::<f32>(plan.splits * n * (3 + c))?;
    positive(stream, &p, &s.q_hat, &s.k_hat, &mut s_pos, n)?;
    let grid = cfg(plan.partial_grid(n));
    let name = match keys {
        Keys::F32(_) => "infonce_partial_f32",
        Keys::F16(_) => "infonce_partial_f16",
        Keys::BF16(_) => "infonce_partial_bf16",
    };
    let f = contrastive(stream, name)?;
    let mut launch = stream.launch_builder(&f);
    launch.arg(&p).arg(&s.q_hat);
    match keys {
        Keys::F32(keys) => launch.arg(keys),
        Keys::F16(keys) | Keys::BF16(keys) => launch.arg(keys),
    };
    launch.arg(&s_pos).arg(&mut partial);
    // SAFETY: infonce_partial_{f32,f16,bf16}(Params, const float* q_hat [N*C], const T* keys [m*C] (float for f32,
    // unsigned short for f16/bf16, matching `name`), const float* s_pos [N], float* partial [splits*N*(3+C)]);
    // key reads are guarded by j < m, row reads by i < N, and block (x, y, z) writes the states and accumulators
    // of rows < N, split y < splits and channels < C only.
    unsafe { launch.launch(grid) }?;
    let f = contrastive(stream, "infonce_combine")?;
    // SAFETY: infonce_combine(Params, q_hat [N*C], k_hat [N*C], partial [splits*N*(3+C)], s_pos [N], q_inv [N],
    // dq [N*C], row_loss [N], rank [N]); block i < N touches row i of each and split states s < splits.
    unsafe {
        stream
            .launch_builder(&f)
            .arg(&p)
            .arg(&s.q_hat)
            .arg(&s.k_hat)
            .arg(&partial)
            .arg(&s_pos)
            .arg(&s.q_inv)
            .arg(&mut *dq)
            .arg(&mut *row_loss)
            .arg(&mut rank)
            .launch(cfg(row_grid(n)))
    }?;
    let f = contrastive(stream, "infonce_reduce")?;
    // SAFETY: infonce_reduce(Params, const float* row_loss [N], const unsigned* rank [N], Stats* stats [4 words]);
    // one block reads indices < N and thread 0 writes the four stats words.
    unsafe { stream.launch_builder(&f).arg(&p).arg(&*row_loss).arg(&rank).arg(stats).launch(cfg(REDUCE_GRID)) }?;
    Ok(())
}

/// Reads the stats buffer written by [`infonce_async`] (`[loss bits, top1, top5, pad]`); waits for the stream.
pub fn read_stats(stream: &Arc<CudaStream>, stats: &CudaSlice<u32>) -> Result<InfoNceStats> {
    check_len("infonce", "stats", stats.len(), STATS_WORDS)?;
    let raw = stream.clone_dtoh(stats)?;
    stream.synchronize()?;
    Ok(InfoNceStats { loss: f32::from_bits(raw[0]), top1: raw[1], top5: raw[2] })
}

/// Fused streaming InfoNCE forward + backward, asynchronous: writes `dq: [N, C]` (gradient w.r.t. raw q),
/// `row_loss: [N]` and `stats: [4]` (u32 words: mean loss as f32 bits, acc@1 count, acc@5 count, 0).
/// `q, k: [N, C]` raw f32, `queue: [K, C]`. Read the scalars with [`read_stats`].
///
/// Launches `normalize_rows` x2 (grid N), `positive_logits` (grid ceil(N/256)), `infonce_partial_{f32,f16,bf16}`
/// (grid (ceil(N/32), splits, ceil(C/256)) of [`StreamPlan`]), `infonce_combine` (grid N) and `infonce_reduce`
/// (one block), 256 threads per block. Allocates its scratch (q̂, k̂, norms, `[splits, N, 3+C]` partials) per call.
#[allow(clippy::too_many_arguments)]
pub fn infonce_async(stream: &Arc<CudaStream>, dq: &mut CudaSlice<f32>, row_loss: &mut CudaSlice<f32>, stats: &mut CudaSlice<u32>, q: &CudaSlice<f32>, k: &CudaSlice<f32>, queue: &CudaQueue, shape: &InfoNceShape) -> Result<()> {
    let op = "infonce";
    let (n, c) = (shape.n, shape.c);
    shape.check_inputs(q.len(), k.len(), queue.len())?;
    shape.check_queue((queue.k(), queue.c()))?;
    shape.check_outputs(dq.len(), row_loss.len())?;
    check_len(op, "stats", stats.len(), STATS_WORDS)?;
    let plan = StreamPlan::new(n, shape.k, c);
    check_grid(op, n, &plan)?;
    let s = Scratch::normalized(stream, q, k, n, c)?;
    stream_loss(stream, &s, Keys::of(queue), shape.k, n, c, shape.temperature, 1.0, false, dq, row_loss, stats)
}

/// [`infonce_async`], then waits and returns the mean loss and acc@1/acc@5 counts.
#[allow(clippy::too_many_arguments)]
pub fn infonce(stream: &Arc<CudaStream>, dq: &mut CudaSlice<f32>, row_loss: &mut CudaSlice<f32>, stats: &mut CudaSlice<u32>, q: &CudaSlice<f32>, k: &CudaSlice<f32>, queue: &CudaQueue, shape: &InfoNceShape) -> Result<InfoNceStats> {
    infonce_async(stream, dq, row_loss, stats, q, k, queue, shape)?;
    read_stats(stream, stats)
}

/// Fused MoCo v3 loss `ctr(q1, k2) + ctr(q2, k1)` with `ctr = 2T · CE(q̂ k̂ᵀ / T, arange(N))`: writes
/// `dq1, dq2: [N, C]` and returns the loss (waits). `q1, q2, k1, k2: [N, C]` raw f32.
///
/// Each half runs the InfoNCE launches of [`infonce_async`] with the normalised keys k̂ as the key set (`m = N`),
/// the diagonal key j = i (the positive) skipped in `infonce_partial_f32` and added back as the positive logit by
/// `infonce_combine`; `loss_scale = 2T`.
#[allow(clippy::too_many_arguments)]
pub fn moco_v3_loss(stream: &Arc<CudaStream>, dq1: &mut CudaSlice<f32>, dq2: &mut CudaSlice<f32>, q1: &CudaSlice<f32>, q2: &CudaSlice<f32>, k1: &CudaSlice<f32>, k2: &CudaSlice<f32>, shape: &SymmetricShape) -> Result<f32> {
    let op = "moco_v3_loss";
    let (n, c, t) = (shape.n, shape.c, shape.temperature);
    shape.check(&[("q1", q1.len()), ("q2", q2.len()), ("k1", k1.len()), ("k2", k2.len()), ("dq1", dq1.len()), ("dq2", dq2.len())])?;
    let plan = StreamPlan::new(n, n, c);
    check_grid(op, n, &plan)?;
    let mut stats = [stream.alloc_zeros::<u32>(STATS_WORDS)?, stream.alloc_zeros::<u32>(STATS_WORDS)?];
    let [st1, st2] = &mut stats;
    for (q, k, dq, st) in [(q1, k2, dq1, st1), (q2, k1, dq2, st2)] {
        let s = Scratch::normalized(stream, q, k, n, c)?;
        let mut row_loss = stream.alloc_zeros::<f32>(n)?;
        stream_loss(stream, &s, Keys::F32(&s.k_hat), n, n, c, t, 2.0 * t, true, dq, &mut row_loss, st)?;
    }
    Ok(read_stats(stream, &stats[0])?.loss + read_stats(stream, &stats[1])?.loss)
}
