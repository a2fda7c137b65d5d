//! Fused contrastive ops on CUDA (`kernels/infonce.cu`): normalised logits, streaming InfoNCE and MoCo v3.
//! The steps, the grid (`StreamPlan`) and the partial-buffer layout are those of the wgpu launcher.

use super::params::{partial_kernel, mma_f32_apply, mma_infonce_apply, mma_logits_apply, negative_logits_grid, negative_logits_mma_f32_grid, negative_logits_mma_grid, positive_grid, row_grid, InfoNceParams as Params, StreamPlan, GPU_TN, MMA_BLOCK, MMA_F32_KEYS, MMA_TILE, REDUCE_GRID};
use super::{check_stats, Infonce, InfoNceShape, InfoNceStats, LogitsShape, Precision, SymmetricShape, KERNELS, STATS_WORDS};
use crate::device::cuda::{cfg, cfg_block, Cuda, Workspace, MAX_GRID_X, MAX_GRID_YZ};
use crate::ops::launch::elem_grid;
use crate::error::{Error, Result};
use crate::ops::normalize::{cuda::normalize_rows, NormalizeShape};
use crate::ops::queue::cuda::{CudaQueue, CudaQueueStorage};
use cudarc::driver::{CudaFunction, CudaStream, CudaView, CudaViewMut, DeviceRepr, PushKernelArg};
use std::sync::Arc;

// SAFETY: #[repr(C)] plain-old-data of 4-byte fields, the layout of `struct InfoNceParams` in kernels/infonce.cu.
unsafe impl DeviceRepr for Params {}
const _: () = assert!(std::mem::size_of::<Params>() == 48 && std::mem::align_of::<Params>() == 4);

fn kernel(stream: &Arc<CudaStream>, name: &'static str) -> Result<CudaFunction> {
    KERNELS.cuda_function(stream, name)
}

/// The scratch of one call, carved from a [`Workspace`] (the device's, reused from call to call, or a call's own):
/// q̂, k̂ `[N, C]` and q's inverse norms `[N]`; for the streaming loss the positive logits `[N]`, the split
/// partials `[splits, N, 3+C]`, a per-row loss `[N]` (MoCo v3's; v1/v2 write the caller's) and the ranks `[N]`; on
/// the tensor cores q̂ rounded to 16 bits `[N, C]`, and MoCo v3's k̂ `[N, C]` or an f32 queue `[K, C]` rounded to bf16.
/// Every element is written before it is read.
struct Scratch<'w> {
    q_hat: CudaView<'w, f32>,
    k_hat: CudaView<'w, f32>,
    q_inv: CudaView<'w, f32>,
    s_pos: CudaViewMut<'w, f32>,
    partial: CudaViewMut<'w, f32>,
    row_loss: CudaViewMut<'w, f32>,
    rank: CudaViewMut<'w, u32>,
    q16: CudaViewMut<'w, u16>,
    k16: CudaViewMut<'w, u16>,
}

/// What a call needs beyond q̂, k̂ and the norms: `(partials, rounded q̂ and k̂ elements)`.
#[derive(Clone, Copy, Default)]
struct Extra {
    partial: usize,
    q16: usize,
    k16: usize,
}

impl<'w> Scratch<'w> {
    /// Takes the scratch from `ws` and normalises `q, k: [N, C]` into it.
    #[allow(clippy::too_many_arguments)]
    fn normalized(stream: &Arc<CudaStream>, ws: &'w mut Workspace, q: &CudaView<'_, f32>, k: &CudaView<'_, f32>, n: usize, c: usize, extra: Extra) -> Result<Self> {
        let Workspace { f32s, u32s, u16s } = ws;
        let [mut q_hat, mut k_hat, mut q_inv, mut k_inv, s_pos, partial, row_loss] = f32s.take(stream, [n * c, n * c, n, n, n, extra.partial, n])?;
        let [rank] = u32s.take(stream, [n])?;
        let [q16, k16] = u16s.take(stream, [extra.q16, extra.k16])?;
        let shape = NormalizeShape::new(n, c)?;
        normalize_rows(stream, &mut q_hat, &mut q_inv, q, &shape)?;
        normalize_rows(stream, &mut k_hat, &mut k_inv, k, &shape)?;
        Ok(Self { q_hat: q_hat.into_view(), k_hat: k_hat.into_view(), q_inv: q_inv.into_view(), s_pos, partial, row_loss, rank, q16, k16 })
    }
}

/// `s_pos[i] = q̂_i · k̂_i * inv_t`: `positive_logits`, one thread per row.
fn positive(stream: &Arc<CudaStream>, p: &Params, q_hat: &CudaView<'_, f32>, k_hat: &CudaView<'_, f32>, s_pos: &mut CudaViewMut<'_, f32>, n: usize) -> Result<()> {
    let f = kernel(stream, "positive_logits")?;
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
pub fn logits(stream: &Arc<CudaStream>, l_pos: &mut CudaViewMut<'_, f32>, l_neg: &mut CudaViewMut<'_, f32>, q: &CudaView<'_, f32>, k: &CudaView<'_, f32>, queue: &CudaQueue, shape: &LogitsShape) -> Result<()> {
    logits_in(stream, &mut Workspace::default(), l_pos, l_neg, q, k, queue, shape)
}

/// [`logits`] with its scratch from `ws`.
#[allow(clippy::too_many_arguments)]
fn logits_in(stream: &Arc<CudaStream>, ws: &mut Workspace, l_pos: &mut CudaViewMut<'_, f32>, l_neg: &mut CudaViewMut<'_, f32>, q: &CudaView<'_, f32>, k: &CudaView<'_, f32>, queue: &CudaQueue, shape: &LogitsShape) -> Result<()> {
    let op = "logits";
    shape.check_inputs(q.len(), k.len(), queue.len())?;
    shape.check_queue(queue)?;
    shape.check_outputs(l_pos.len(), l_neg.len())?;
    let (n, c, kk) = (shape.n, shape.c, shape.k);
    if kk.div_ceil(64) > MAX_GRID_X || n.div_ceil(16) > MAX_GRID_YZ {
        return Err(Error::shape(op, format!("N <= {} for the materialising kernel", MAX_GRID_YZ * 16), format!("N = {n}, K = {kk}")));
    }
    let path = Path::choose(stream, shape.precision(), queue.code() == 0, c, mma_logits_apply(c, mma_code(queue)))?;
    let mma = path == Path::Half;
    let extra = Extra { q16: if mma { n * c } else { 0 }, k16: if mma { rounded_queue_len(queue) } else { 0 }, ..Extra::default() };
    let mut s = Scratch::normalized(stream, ws, q, k, n, c, extra)?;
    let p = Params::logits(n, c, kk);
    positive(stream, &p, &s.q_hat, &s.k_hat, l_pos, n)?;
    if let (Path::Tf32 { x3 }, CudaQueueStorage::F32(keys)) = (path, &queue.storage) {
        return negative_logits_tf32(stream, &p, &s.q_hat, &keys.as_view(), l_neg, n, kk, x3);
    }
    if mma {
        let Scratch { q_hat, q16, k16, .. } = &mut s;
        let (suffix, keys) = keys16(stream, queue, k16, kk, c)?;
        return negative_logits_mma(stream, &p, q_hat, q16, suffix, &keys, l_neg, n, c, kk);
    }
    let grid = cfg(negative_logits_grid(n, kk));
    match &queue.storage {
        CudaQueueStorage::F32(keys) => {
            let f = kernel(stream, "negative_logits_f32")?;
            // SAFETY: negative_logits_f32(Params, const float* q_hat [N*C], const float* keys [K*C], float* l_neg
            // [N*K]); reads and writes are guarded by gi < N, gj < K, gc < C; lengths checked above.
            unsafe { stream.launch_builder(&f).arg(&p).arg(&s.q_hat).arg(keys).arg(l_neg).launch(grid) }?;
        }
        CudaQueueStorage::F16(keys) | CudaQueueStorage::BF16(keys) => {
            let name = if queue.code() == 1 { "negative_logits_f16" } else { "negative_logits_bf16" };
            let f = kernel(stream, name)?;
            // SAFETY: negative_logits_{f16,bf16}(Params, const float* q_hat [N*C], const unsigned short* keys
            // [K*C], float* l_neg [N*K]); accesses guarded by gi < N, gj < K, gc < C; lengths checked above.
            unsafe { stream.launch_builder(&f).arg(&p).arg(&s.q_hat).arg(keys).arg(l_neg).launch(grid) }?;
        }
    }
    Ok(())
}

/// q̂ `[N*C]` rounded to nearest even in the 16-bit format `suffix` ("f16" / "bf16"): `round_rows_to_<suffix>`.
fn round_rows(stream: &Arc<CudaStream>, p: &Params, q_hat: &CudaView<'_, f32>, q16: &mut CudaViewMut<'_, u16>, suffix: &str, len: usize) -> Result<()> {
    let round = kernel(stream, if suffix == "f16" { "round_rows_to_f16" } else { "round_rows_to_bf16" })?;
    // SAFETY: round_rows_to_*(Params, const float* x [N*C], unsigned short* y [N*C]); thread i < N*C (= len, from
    // p) reads x[i] and writes y[i]; both hold len elements.
    unsafe { stream.launch_builder(&round).arg(p).arg(q_hat).arg(q16).launch(cfg(elem_grid(len))) }?;
    Ok(())
}

/// The 16-bit format (1 f16, 2 bf16) the tensor cores read `queue` in at [`Precision::Half`]: a 16-bit queue's own;
/// bf16 for an f32 queue, rounded per call ([`keys16`]).
fn mma_code(queue: &CudaQueue) -> u32 {
    match queue.code() {
        0 => 2,
        code => code,
    }
}

/// The scratch elements [`keys16`] takes for `queue`: `K*C` for an f32 queue, none for a 16-bit one.
fn rounded_queue_len(queue: &CudaQueue) -> usize {
    match &queue.storage {
        CudaQueueStorage::F32(keys) => keys.len(),
        CudaQueueStorage::F16(_) | CudaQueueStorage::BF16(_) => 0,
    }
}

/// The queue `[kk, C]` as the tensor cores read it at [`Precision::Half`], with its format's kernel suffix: a 16-bit
/// queue as stored; an f32 queue rounded to nearest-even bf16 into `k16` (`round_rows_to_bf16`, one pass: 4 bytes
/// read and 2 written per element, against the f32 kernels' 4 read per element and tile; the keys then carry bf16's
/// rounding too, [`Precision::cosine_bound`]).
fn keys16<'a>(stream: &Arc<CudaStream>, queue: &'a CudaQueue, k16: &'a mut CudaViewMut<'_, u16>, kk: usize, c: usize) -> Result<(&'static str, CudaView<'a, u16>)> {
    match &queue.storage {
        CudaQueueStorage::F16(keys) => Ok(("f16", keys.as_view())),
        CudaQueueStorage::BF16(keys) => Ok(("bf16", keys.as_view())),
        CudaQueueStorage::F32(keys) => {
            round_rows(stream, &Params::logits(kk, c, kk), &keys.as_view(), k16, "bf16", kk * c)?;
            Ok(("bf16", k16.as_view()))
        }
    }
}

/// Whether the device has the sm_80 tensor-core instructions (mma.sync bf16/f16, ldmatrix, cp.async).
fn tensor_cores(stream: &Arc<CudaStream>) -> Result<bool> {
    Ok(stream.context().compute_capability()?.0 >= 8)
}

/// `l_neg: [N, K]` on the tensor cores (16-bit keys `[K, C]` in the format `suffix`, C % 8 == 0, sm_80+):
/// `round_rows_to_{f16,bf16}` rounds q̂ to the keys' format (grid over N*C), then `negative_logits_mma_{f16,bf16}`
/// (grid (ceil(K/64), ceil(N/64)), 128 threads, a 64 x 64 tile per block).
#[allow(clippy::too_many_arguments)]
fn negative_logits_mma(stream: &Arc<CudaStream>, p: &Params, q_hat: &CudaView<'_, f32>, q16: &mut CudaViewMut<'_, u16>, suffix: &str, keys: &CudaView<'_, u16>, l_neg: &mut CudaViewMut<'_, f32>, n: usize, c: usize, kk: usize) -> Result<()> {
    if n.div_ceil(MMA_TILE) > MAX_GRID_YZ || kk.div_ceil(MMA_TILE) > MAX_GRID_X {
        return Err(Error::shape("logits", format!("N <= {}", MAX_GRID_YZ * MMA_TILE), format!("N = {n}, K = {kk}")));
    }
    round_rows(stream, p, q_hat, q16, suffix, n * c)?;
    let q16 = q16.as_view();
    let f = kernel(stream, if suffix == "f16" { "negative_logits_mma_f16" } else { "negative_logits_mma_bf16" })?;
    // SAFETY: negative_logits_mma_*(Params, const unsigned short* q16 [N*C], const unsigned short* keys [K*C], float*
    // l_neg [N*K]); the cp.async copies read whole 16-byte pieces of rows < N (q16) or < K (keys) at channels < C
    // (C % 8 == 0, checked by mma_logits_apply), and the stores are guarded by i < N, j < K; lengths checked by the
    // caller.
    unsafe { stream.launch_builder(&f).arg(p).arg(&q16).arg(keys).arg(l_neg).launch(cfg_block(negative_logits_mma_grid(n, kk), MMA_BLOCK)) }?;
    Ok(())
}

/// The kernels a call takes for its logits (and the loss's partial pass).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// f32 FMAs on the CUDA cores (`*_f32`, `*_f16`, `*_bf16`).
    Cores,
    /// 16-bit operands on the tensor cores (`*_mma_f16`, `*_mma_bf16`): [`Precision::Half`].
    Half,
    /// f32 keys on the TF32 tensor cores (`*_mma_tf32x3` when `x3`, else `*_mma_tf32`): [`Precision::Tf32x3`],
    /// [`Precision::Tf32`].
    Tf32 { x3: bool },
}

impl Path {
    /// `precision`'s tensor cores where the device (sm_80+), the keys (`f32_keys`: an f32 queue or MoCo v3's k̂) and
    /// C allow them (`half_fits`: the 16-bit kernels' shape rule; the TF32 kernels' is [`mma_f32_apply`]); else the
    /// CUDA cores, which hold every precision's bound.
    fn choose(stream: &Arc<CudaStream>, precision: Precision, f32_keys: bool, c: usize, half_fits: bool) -> Result<Self> {
        let want = match precision {
            Precision::Half if half_fits => Path::Half,
            Precision::Tf32x3 | Precision::Tf32 if f32_keys && mma_f32_apply(c) => Path::Tf32 { x3: precision == Precision::Tf32x3 },
            _ => return Ok(Path::Cores),
        };
        Ok(if tensor_cores(stream)? { want } else { Path::Cores })
    }
    /// The loss's plan on this path.
    fn plan(self, n: usize, m: usize, c: usize) -> StreamPlan {
        match self {
            Path::Cores => StreamPlan::new(n, m, c),
            Path::Half => StreamPlan::mma(n, m, c),
            Path::Tf32 { .. } => StreamPlan::mma_f32(n, m, c),
        }
    }
}

/// `l_neg: [N, K]` on the TF32 tensor cores (f32 keys `[K, C]`, C % 4 == 0, C <= 128, sm_80+):
/// `negative_logits_mma_{tf32x3,tf32}` (grid (ceil(K/32), ceil(N/64)), 128 threads, a 64 x 32 tile per block).
#[allow(clippy::too_many_arguments)]
fn negative_logits_tf32(stream: &Arc<CudaStream>, p: &Params, q_hat: &CudaView<'_, f32>, keys: &CudaView<'_, f32>, l_neg: &mut CudaViewMut<'_, f32>, n: usize, kk: usize, x3: bool) -> Result<()> {
    if n.div_ceil(MMA_TILE) > MAX_GRID_YZ || kk.div_ceil(MMA_F32_KEYS) > MAX_GRID_X {
        return Err(Error::shape("logits", format!("N <= {} and K <= {}", MAX_GRID_YZ * MMA_TILE, MAX_GRID_X * MMA_F32_KEYS), format!("N = {n}, K = {kk}")));
    }
    let f = kernel(stream, if x3 { "negative_logits_mma_tf32x3" } else { "negative_logits_mma_tf32" })?;
    // SAFETY: negative_logits_mma_{tf32,tf32x3}(Params, const float* q_hat [N*C], const float* keys [K*C], float*
    // l_neg [N*K]); the cp.async copies read whole 16-byte pieces of key rows < K at channels < C (C % 4 == 0,
    // checked by mma_f32_apply), q_hat reads are guarded by i < N, ch < C, and the stores by i < N, j < K; lengths
    // checked by the caller.
    unsafe { stream.launch_builder(&f).arg(p).arg(q_hat).arg(keys).arg(l_neg).launch(cfg_block(negative_logits_mma_f32_grid(n, kk), MMA_BLOCK)) }?;
    Ok(())
}

/// The key set streamed by the loss: the queue (any dtype), MoCo v3's normalised keys k̂ of the call's scratch (as
/// f32), or the scratch's 16-bit keys for the tensor cores (k̂, or an f32 queue, rounded to bf16).
enum KeySet<'a> {
    Queue(&'a CudaQueue),
    KHat,
    Rounded16,
}

fn check_grid(op: &'static str, n: usize, plan: &StreamPlan) -> Result<()> {
    if n.div_ceil(GPU_TN) > MAX_GRID_X || plan.splits > MAX_GRID_YZ || plan.slices > MAX_GRID_YZ {
        return Err(Error::shape(op, format!("C <= {} (channel slices per launch)", MAX_GRID_YZ * plan.c_slice), format!("N = {n}, {} slices", plan.slices)));
    }
    Ok(())
}

/// The streaming loss over prepared q̂, k̂ (positives) and a key set `[m, C]`: `positive_logits`,
/// `infonce_partial_c128_*` (C <= 128) or `infonce_partial_*` (grid (ceil(N/32), splits, slices) of [`StreamPlan`];
/// [`partial_kernel`]) or, on [`Path::Half`] (a 16-bit key set, C <= 128, C % 8 == 0,
/// sm_80+), `round_rows_to_*` and `infonce_partial_mma_*` (grid (ceil(N/64), splits) of [`StreamPlan::mma`], 128
/// threads), or on [`Path::Tf32`] (f32 keys) `infonce_partial_mma_{tf32x3,tf32}` (grid of [`StreamPlan::mma_f32`]),
/// then `infonce_combine` (grid N) and `infonce_reduce` (one block). `row_loss`: the caller's, or (None) the
/// scratch's.
#[allow(clippy::too_many_arguments)]
fn stream_loss(stream: &Arc<CudaStream>, s: &mut Scratch<'_>, plan: &StreamPlan, keys: KeySet, m: usize, n: usize, c: usize, t: f32, loss_scale: f32, skip_diagonal: bool, path: Path, dq: &mut CudaViewMut<'_, f32>, row_loss: Option<&mut CudaViewMut<'_, f32>>, stats: &mut CudaViewMut<'_, u32>) -> Result<()> {
    let p = Params::stream(plan, n, m, c, t, loss_scale, skip_diagonal);
    let Scratch { q_hat, k_hat, q_inv, s_pos, partial, row_loss: own_row_loss, rank, q16, k16 } = s;
    let mut row_loss = match row_loss {
        Some(r) => r.slice_mut(..),
        None => own_row_loss.slice_mut(..),
    };
    let row_loss = &mut row_loss;
    positive(stream, &p, q_hat, k_hat, s_pos, n)?;
    let s_pos = s_pos.as_view();
    let queue = match keys {
        KeySet::Queue(queue) => Some(&queue.storage),
        KeySet::KHat | KeySet::Rounded16 => None,
    };
    if let Path::Tf32 { x3 } = path {
        if n.div_ceil(MMA_TILE) > MAX_GRID_X {
            return Err(Error::shape("infonce", format!("N <= {}", MAX_GRID_X * MMA_TILE), format!("N = {n}")));
        }
        let f = kernel(stream, if x3 { "infonce_partial_mma_tf32x3" } else { "infonce_partial_mma_tf32" })?;
        let mut launch = stream.launch_builder(&f);
        launch.arg(&p).arg(&*q_hat);
        match (queue, &keys) {
            (Some(CudaQueueStorage::F32(k)), _) => launch.arg(k),
            (None, KeySet::KHat) => launch.arg(&*k_hat),
            _ => return Err(Error::shape("infonce", "f32 keys for the TF32 tensor-core path", "16-bit keys")),
        };
        launch.arg(&s_pos).arg(&mut *partial);
        // SAFETY: infonce_partial_mma_{tf32,tf32x3}(Params, const float* q_hat [N*C], const float* keys [m*C], const
        // float* s_pos [N], float* partial [splits*N*(3+C)]); the cp.async copies read whole 16-byte pieces of key
        // rows < m at channels < C (C % 4 == 0), q_hat reads are guarded by i < N, ch < C, and block (x, y) writes
        // the states and accumulators of rows < N, split y < splits, channels < C only.
        unsafe { launch.launch(cfg_block(plan.mma_partial_grid(n), MMA_BLOCK)) }?;
        return combine_and_reduce(stream, &p, q_hat, k_hat, q_inv, &partial.as_view(), &s_pos, rank, n, dq, row_loss, stats);
    }
    if path == Path::Half {
        let (suffix, key16) = match (queue, &keys) {
            (Some(CudaQueueStorage::F16(k)), _) => ("f16", k.as_view()),
            (Some(CudaQueueStorage::BF16(k)), _) => ("bf16", k.as_view()),
            (None, KeySet::Rounded16) => ("bf16", k16.as_view()),
            _ => return Err(Error::shape("infonce", "a 16-bit key set for the tensor-core path", "f32 keys")),
        };
        if n.div_ceil(MMA_TILE) > MAX_GRID_X {
            return Err(Error::shape("infonce", format!("N <= {}", MAX_GRID_X * MMA_TILE), format!("N = {n}")));
        }
        round_rows(stream, &p, q_hat, q16, suffix, n * c)?;
        let q16 = q16.as_view();
        let f = kernel(stream, if suffix == "f16" { "infonce_partial_mma_f16" } else { "infonce_partial_mma_bf16" })?;
        // SAFETY: infonce_partial_mma_*(Params, const unsigned short* q16 [N*C], const unsigned short* keys [m*C],
        // const float* s_pos [N], float* partial [splits*N*(3+C)]); the cp.async copies read whole 16-byte pieces of
        // rows < N (q16) or < m (keys) at channels < C (C % 8 == 0), and block (x, y) writes the states and
        // accumulators of rows < N, split y < splits, channels < C only.
        unsafe { stream.launch_builder(&f).arg(&p).arg(&q16).arg(&key16).arg(&s_pos).arg(&mut *partial).launch(cfg_block(plan.mma_partial_grid(n), MMA_BLOCK)) }?;
        return combine_and_reduce(stream, &p, q_hat, k_hat, q_inv, &partial.as_view(), &s_pos, rank, n, dq, row_loss, stats);
    }
    let grid = cfg(plan.partial_grid(n));
    // the keys' storage, and C <= 128 (each key tile read once) or any C (params::partial_kernel)
    let resident = partial_kernel(c) == "infonce_partial_c128";
    let name = match (queue, resident) {
        (Some(CudaQueueStorage::F32(_)) | None, true) => "infonce_partial_c128_f32",
        (Some(CudaQueueStorage::F16(_)), true) => "infonce_partial_c128_f16",
        (Some(CudaQueueStorage::BF16(_)), true) => "infonce_partial_c128_bf16",
        (Some(CudaQueueStorage::F32(_)) | None, false) => "infonce_partial_f32",
        (Some(CudaQueueStorage::F16(_)), false) => "infonce_partial_f16",
        (Some(CudaQueueStorage::BF16(_)), false) => "infonce_partial_bf16",
    };
    let f = kernel(stream, name)?;
    let mut launch = stream.launch_builder(&f);
    launch.arg(&p).arg(&*q_hat);
    match queue {
        Some(CudaQueueStorage::F32(keys)) => launch.arg(keys),
        Some(CudaQueueStorage::F16(keys) | CudaQueueStorage::BF16(keys)) => launch.arg(keys),
        None => launch.arg(&*k_hat),
    };
    launch.arg(&s_pos).arg(&mut *partial);
    // SAFETY: infonce_partial{,_c128}_{f32,f16,bf16}(Params, const float* q_hat [N*C], const T* keys [m*C] (float for f32
    // and for k̂, unsigned short for f16/bf16, matching `name`), const float* s_pos [N], float* partial
    // [splits*N*(3+C)]); key reads are guarded by j < m, row reads by i < N, and block (x, y, z) writes the states
    // and accumulators of rows < N, split y < splits and channels < C only.
    unsafe { launch.launch(grid) }?;
    combine_and_reduce(stream, &p, q_hat, k_hat, q_inv, &partial.as_view(), &s_pos, rank, n, dq, row_loss, stats)
}

/// `infonce_combine` (grid N: the split states and accumulators of `partial` into row_loss, rank and dq) and
/// `infonce_reduce` (one block: the stats words).
#[allow(clippy::too_many_arguments)]
fn combine_and_reduce(stream: &Arc<CudaStream>, p: &Params, q_hat: &CudaView<'_, f32>, k_hat: &CudaView<'_, f32>, q_inv: &CudaView<'_, f32>, partial: &CudaView<'_, f32>, s_pos: &CudaView<'_, f32>, rank: &mut CudaViewMut<'_, u32>, n: usize, dq: &mut CudaViewMut<'_, f32>, row_loss: &mut CudaViewMut<'_, f32>, stats: &mut CudaViewMut<'_, u32>) -> Result<()> {
    let f = kernel(stream, "infonce_combine")?;
    // SAFETY: infonce_combine(Params, q_hat [N*C], k_hat [N*C], partial [splits*N*(3+C)], s_pos [N], q_inv [N],
    // dq [N*C], row_loss [N], rank [N]); block i < N touches row i of each and split states s < splits.
    unsafe {
        stream
            .launch_builder(&f)
            .arg(p)
            .arg(q_hat)
            .arg(k_hat)
            .arg(partial)
            .arg(s_pos)
            .arg(q_inv)
            .arg(&mut *dq)
            .arg(&mut *row_loss)
            .arg(&mut *rank)
            .launch(cfg(row_grid(n)))
    }?;
    let (row_loss, rank) = (row_loss.as_view(), rank.as_view());
    let f = kernel(stream, "infonce_reduce")?;
    // SAFETY: infonce_reduce(Params, const float* row_loss [N], const unsigned* rank [N], Stats* stats [4 words]);
    // one block reads indices < N and thread 0 writes the four stats words.
    unsafe { stream.launch_builder(&f).arg(p).arg(&row_loss).arg(&rank).arg(stats).launch(cfg(REDUCE_GRID)) }?;
    Ok(())
}

/// Reads a stats buffer written by [`infonce_async`] (`[loss bits, top1, top5, pad]`); waits for the stream.
pub fn read_stats(stream: &Arc<CudaStream>, stats: &CudaView<'_, u32>) -> Result<InfoNceStats> {
    let raw = stream.clone_dtoh(stats)?;
    stream.synchronize()?;
    InfoNceStats::from_words(&raw)
}

/// Fused streaming InfoNCE forward + backward, asynchronous: writes `dq: [N, C]` (gradient w.r.t. raw q),
/// `row_loss: [N]` and `stats: [4]` (u32 words: mean loss as f32 bits, acc@1 count, acc@5 count, 0).
/// `q, k: [N, C]` raw f32, `queue: [K, C]`. Read the scalars with [`read_stats`].
///
/// Launches `normalize_rows` x2 (grid N), `positive_logits` (grid ceil(N/256)), `infonce_partial_{f32,f16,bf16}`
/// (grid (ceil(N/32), splits, ceil(C/256)) of [`StreamPlan`]), `infonce_combine` (grid N) and `infonce_reduce`
/// (one block), 256 threads per block. Allocates its scratch (q̂, k̂, norms, `[splits, N, 3+C]` partials) per call.
#[allow(clippy::too_many_arguments)]
pub fn infonce_async(stream: &Arc<CudaStream>, dq: &mut CudaViewMut<'_, f32>, row_loss: &mut CudaViewMut<'_, f32>, stats: &mut CudaViewMut<'_, u32>, q: &CudaView<'_, f32>, k: &CudaView<'_, f32>, queue: &CudaQueue, shape: &InfoNceShape) -> Result<()> {
    infonce_in(stream, &mut Workspace::default(), dq, row_loss, stats, q, k, queue, shape)
}

/// [`infonce_async`] with its scratch from `ws`.
#[allow(clippy::too_many_arguments)]
fn infonce_in(stream: &Arc<CudaStream>, ws: &mut Workspace, dq: &mut CudaViewMut<'_, f32>, row_loss: &mut CudaViewMut<'_, f32>, stats: &mut CudaViewMut<'_, u32>, q: &CudaView<'_, f32>, k: &CudaView<'_, f32>, queue: &CudaQueue, shape: &InfoNceShape) -> Result<()> {
    let op = "infonce";
    let (n, c) = (shape.n, shape.c);
    shape.check_inputs(q.len(), k.len(), queue.len())?;
    shape.check_queue(queue)?;
    shape.check_outputs(dq.len(), row_loss.len())?;
    check_stats(op, stats.len(), STATS_WORDS)?;
    check_grid(op, n, &StreamPlan::new(n, shape.k, c))?;
    let path = Path::choose(stream, shape.precision(), queue.code() == 0, c, mma_infonce_apply(c, mma_code(queue)))?;
    let mma = path == Path::Half;
    let plan = path.plan(n, shape.k, c);
    let rounded = if mma { rounded_queue_len(queue) } else { 0 };
    let extra = Extra { partial: plan.splits * n * (3 + c), q16: if mma { n * c } else { 0 }, k16: rounded };
    let mut s = Scratch::normalized(stream, ws, q, k, n, c, extra)?;
    let keys = if rounded > 0 {
        // an f32 queue at Half: its bf16 copy in the scratch is the key set
        keys16(stream, queue, &mut s.k16, shape.k, c)?;
        KeySet::Rounded16
    } else {
        KeySet::Queue(queue)
    };
    stream_loss(stream, &mut s, &plan, keys, shape.k, n, c, shape.temperature, 1.0, false, path, dq, Some(row_loss), stats)
}

/// [`infonce_async`], then waits and returns the mean loss and acc@1/acc@5 counts.
#[allow(clippy::too_many_arguments)]
pub fn infonce(stream: &Arc<CudaStream>, dq: &mut CudaViewMut<'_, f32>, row_loss: &mut CudaViewMut<'_, f32>, stats: &mut CudaViewMut<'_, u32>, q: &CudaView<'_, f32>, k: &CudaView<'_, f32>, queue: &CudaQueue, shape: &InfoNceShape) -> Result<InfoNceStats> {
    infonce_async(stream, dq, row_loss, stats, q, k, queue, shape)?;
    read_stats(stream, &stats.as_view())
}

/// Fused MoCo v3 loss `ctr(q1, k2) + ctr(q2, k1)` with `ctr = 2T · CE(q̂ k̂ᵀ / T, arange(N))`: writes
/// `dq1, dq2: [N, C]` and `stats: [2 * STATS_WORDS]` (one block per direction), asynchronously. `q1, q2, k1, k2:
/// [N, C]` raw f32.
///
/// Each half runs the InfoNCE launches of [`infonce_async`] with the normalised keys k̂ as the key set (`m = N`),
/// the diagonal key j = i (the positive) skipped in `infonce_partial_f32` and added back as the positive logit by
/// `infonce_combine`; `loss_scale = 2T`.
#[allow(clippy::too_many_arguments)]
pub fn moco_v3_loss_async(stream: &Arc<CudaStream>, dq1: &mut CudaViewMut<'_, f32>, dq2: &mut CudaViewMut<'_, f32>, stats: &mut CudaViewMut<'_, u32>, q1: &CudaView<'_, f32>, q2: &CudaView<'_, f32>, k1: &CudaView<'_, f32>, k2: &CudaView<'_, f32>, shape: &SymmetricShape) -> Result<()> {
    moco_v3_loss_in(stream, &mut Workspace::default(), dq1, dq2, stats, q1, q2, k1, k2, shape)
}

/// [`moco_v3_loss_async`] with its scratch from `ws`.
#[allow(clippy::too_many_arguments)]
fn moco_v3_loss_in(stream: &Arc<CudaStream>, ws: &mut Workspace, dq1: &mut CudaViewMut<'_, f32>, dq2: &mut CudaViewMut<'_, f32>, stats: &mut CudaViewMut<'_, u32>, q1: &CudaView<'_, f32>, q2: &CudaView<'_, f32>, k1: &CudaView<'_, f32>, k2: &CudaView<'_, f32>, shape: &SymmetricShape) -> Result<()> {
    let op = "moco_v3_loss";
    let (n, c, t) = (shape.n, shape.c, shape.temperature);
    shape.check(&[("q1", q1.len()), ("q2", q2.len()), ("k1", k1.len()), ("k2", k2.len()), ("dq1", dq1.len()), ("dq2", dq2.len())])?;
    check_stats(op, stats.len(), 2 * STATS_WORDS)?;
    check_grid(op, n, &StreamPlan::new(n, n, c))?;
    let (mut st1, mut st2) = stats.split_at_mut(STATS_WORDS);
    // Half: the key set is k̂ rounded to bf16, and the tensor-core pass streams it; Tf32x3 and Tf32 stream k̂ as it is
    let path = Path::choose(stream, shape.precision(), true, c, mma_infonce_apply(c, 2))?;
    let mma = path == Path::Half;
    let plan = path.plan(n, n, c);
    let rounded = if mma { n * c } else { 0 };
    let extra = Extra { partial: plan.splits * n * (3 + c), q16: rounded, k16: rounded };
    // ctr(q1, k2) into dq1 and the first stats block, ctr(q2, k1) into dq2 and the second (the second half takes
    // the same scratch after the first half's kernels, in stream order)
    for (q, k, mut dq, st) in [(q1, k2, dq1.slice_mut(..), &mut st1), (q2, k1, dq2.slice_mut(..), &mut st2)] {
        let mut s = Scratch::normalized(stream, ws, q, k, n, c, extra)?;
        if mma {
            round_rows(stream, &Params::logits(n, c, n), &s.k_hat, &mut s.k16, "bf16", n * c)?;
        }
        let keys = if mma { KeySet::Rounded16 } else { KeySet::KHat };
        stream_loss(stream, &mut s, &plan, keys, n, n, c, t, 2.0 * t, true, path, &mut dq, None, st)?;
    }
    Ok(())
}

/// [`moco_v3_loss_async`], then waits and returns the loss.
#[allow(clippy::too_many_arguments)]
pub fn moco_v3_loss(stream: &Arc<CudaStream>, dq1: &mut CudaViewMut<'_, f32>, dq2: &mut CudaViewMut<'_, f32>, q1: &CudaView<'_, f32>, q2: &CudaView<'_, f32>, k1: &CudaView<'_, f32>, k2: &CudaView<'_, f32>, shape: &SymmetricShape) -> Result<f32> {
    let mut stats = stream.alloc_zeros::<u32>(2 * STATS_WORDS)?;
    moco_v3_loss_async(stream, dq1, dq2, &mut stats.as_view_mut(), q1, q2, k1, k2, shape)?;
    let raw = stream.clone_dtoh(&stats)?;
    stream.synchronize()?;
    super::v3_loss_from_words(&raw)
}

impl Infonce for Cuda {
    fn infonce(&mut self, mut dq: CudaViewMut<'_, f32>, mut row_loss: CudaViewMut<'_, f32>, mut stats: CudaViewMut<'_, u32>, q: CudaView<'_, f32>, k: CudaView<'_, f32>, queue: &CudaQueue, shape: &InfoNceShape) -> Result<()> {
        let (stream, ws) = self.workspace();
        infonce_in(&stream, ws, &mut dq, &mut row_loss, &mut stats, &q, &k, queue, shape)
    }
    fn logits(&mut self, mut l_pos: CudaViewMut<'_, f32>, mut l_neg: CudaViewMut<'_, f32>, q: CudaView<'_, f32>, k: CudaView<'_, f32>, queue: &CudaQueue, shape: &LogitsShape) -> Result<()> {
        let (stream, ws) = self.workspace();
        logits_in(&stream, ws, &mut l_pos, &mut l_neg, &q, &k, queue, shape)
    }
    fn moco_v3_loss(&mut self, mut dq1: CudaViewMut<'_, f32>, mut dq2: CudaViewMut<'_, f32>, mut stats: CudaViewMut<'_, u32>, q1: CudaView<'_, f32>, q2: CudaView<'_, f32>, k1: CudaView<'_, f32>, k2: CudaView<'_, f32>, shape: &SymmetricShape) -> Result<()> {
        let (stream, ws) = self.workspace();
        moco_v3_loss_in(&stream, ws, &mut dq1, &mut dq2, &mut stats, &q1, &q2, &k1, &k2, shape)
    }
}
