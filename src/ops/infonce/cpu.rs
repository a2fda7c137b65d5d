//! Fused contrastive ops on the CPU: L2-normalised logits, streaming InfoNCE (forward + backward in one pass
//! over the queue) and MoCo v3's symmetric loss. The algorithm is the one of `kernels/infonce.cu` and
//! `shaders/infonce.wgsl`: normalise q and k, stream key blocks, keep an online log-sum-exp and a rescaled
//! accumulator `acc = Σ_j exp(s_j - m) key_j` per row, merge the partial states of the key splits, then finish
//! each row (positive logit, loss, rank, gradient through the normalisation). MoCo v3's loss has only N keys, so
//! it keeps a `[rows, N]` logit tile per task instead: one GEMM for the logits, the exact row softmax in place,
//! one GEMM for the gradient.

use super::softmax::{merge_row, softmax_block, softmax_xent_row, BlockScratch, RowStates, MASKED};
use super::{check_stats, Infonce, InfoNceShape, InfoNceStats, LogitsShape, SymmetricShape, STATS_WORDS};
use crate::device::CpuDevice;
use crate::error::Result;
use crate::ops::linear::gemm::{gemm_nn, gemm_nt, gemm_tn};
use crate::ops::normalize::cpu::{dot, normalize_unchecked};
use crate::ops::normalize::NORM_EPS;
use crate::ops::queue::{CpuQueue, QueueView};
use rayon::prelude::*;

/// Keys per streamed block (the CPU tile along K).
pub const KEY_BLOCK: usize = 256;
/// Rows of q per task: bounds the accumulator and logit block a thread keeps in cache.
pub const ROW_BLOCK: usize = 256;



/// Row-wise dot products `out[r] = a[r, :] · b[r, :]`.
fn row_dots(out: &mut [f32], a: &[f32], b: &[f32], c: usize) {
    for (r, o) in out.iter_mut().enumerate() {
        *o = dot(&a[r * c..(r + 1) * c], &b[r * c..(r + 1) * c]);
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: tasks write disjoint regions through it (documented at each use).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// L2-normalised logits, materialised: `l_pos[i] = q̂_i·k̂_i` (`[N]`), `l_neg[i, j] = q̂_i·queue_j` (`[N, K]`).
/// `q, k: [N, C]`, `queue: [K, C]`. The queue is used as stored (MoCo keeps it normalised).
pub fn logits(l_pos: &mut [f32], l_neg: &mut [f32], q: &[f32], k: &[f32], queue: QueueView, shape: &LogitsShape) -> Result<()> {
    shape.check_inputs(q.len(), k.len(), queue.len())?;
    shape.check_queue(&queue)?;
    shape.check_outputs(l_pos.len(), l_neg.len())?;
    let (n, c, kk) = (shape.n, shape.c, shape.k);
    let (mut qh, mut kh) = (vec![0.0; n * c], vec![0.0; n * c]);
    let (mut qi, mut ki) = (vec![0.0; n], vec![0.0; n]);
    normalize_unchecked(&mut qh, &mut qi, q, c);
    normalize_unchecked(&mut kh, &mut ki, k, c);
    row_dots(l_pos, &qh, &kh, c);
    let dst = SendPtr(l_neg.as_mut_ptr());
    let blocks: Vec<usize> = (0..kk).step_by(KEY_BLOCK).collect();
    blocks.par_iter().for_each_init(Vec::new, |scratch, &j0| {
        let nb = KEY_BLOCK.min(kk - j0);
        let keys = queue.range_f32(j0 * c, nb * c, scratch);
        let d = dst;
        // SAFETY: this task writes only columns [j0, j0+nb) of l_neg [N, K]; tasks' column ranges are disjoint.
        let out = unsafe { std::slice::from_raw_parts_mut(d.0.add(j0), (n - 1) * kk + nb) };
        gemm_nt(out, kk, &qh, c, keys, c, n, nb, c, 1.0, false);
    });
    Ok(())
}

/// Partial state of a task: rows `[r0, r0+nr)` against keys `[j0, j1)`.
struct Partial {
    r0: usize,
    nr: usize,
    states: RowStates,
    acc_t: Vec<f32>, // [C, nr]: acc transposed
}

/// Streams keys `[j0, j1)` for rows `[r0, r0+nr)` of `qh` (`[N, C]`). `s_pos: [N]` positive logits / T.
/// Per block of `nb` keys: `s_t [nb, nr] = keys · q̂ᵀ / T`, the online softmax, then `acc_t [C, nr] += keysᵀ · p_t`.
#[allow(clippy::too_many_arguments)]
fn stream_keys(qh: &[f32], s_pos: &[f32], keys: QueueView, c: usize, r0: usize, nr: usize, j0: usize, j1: usize, inv_t: f32) -> Partial {
    let mut states = RowStates::new(nr);
    let mut acc_t = vec![0.0f32; c * nr];
    let mut s_t = vec![0.0f32; KEY_BLOCK * nr];
    let mut scale = vec![1.0f32; nr];
    let mut scratch = Vec::new();
    let mut block_scratch = BlockScratch::default();
    // q̂ rows transposed once: [C, nr]
    let mut q_t = vec![0.0f32; c * nr];
    for r in 0..nr {
        for ch in 0..c {
            q_t[ch * nr + r] = qh[(r0 + r) * c + ch];
        }
    }
    let s_pos = &s_pos[r0..r0 + nr];
    let mut jb = j0;
    while jb < j1 {
        let nb = KEY_BLOCK.min(j1 - jb);
        let kb = keys.range_f32(jb * c, nb * c, &mut scratch);
        let s_blk = &mut s_t[..nb * nr];
        gemm_nn(s_blk, nr, kb, c, &q_t, nr, nb, nr, c, inv_t, false);
        softmax_block(s_blk, nr, &mut states, s_pos, &mut scale, &mut block_scratch);
        if scale.iter().any(|&f| f != 1.0) {
            for row in acc_t.chunks_exact_mut(nr) {
                for (a, f) in row.iter_mut().zip(&scale) {
                    *a *= f;
                }
            }
        }
        // acc_t [C, nr] += kbᵀ [C, nb] · p_t [nb, nr]
        gemm_tn(&mut acc_t, nr, kb, c, s_blk, nr, c, nr, nb);
        jb += nb;
    }
    Partial { r0, nr, states, acc_t }
}

/// The GEMM floor of [`infonce`]: the same two GEMMs per key block (`s_t = keys · q̂ᵀ`, then
/// `acc_t += keysᵀ · s_t`), with the same routine, tiles, tasks and threads, but no softmax, no merges and no
/// finish. `qh: [N, C]`, `queue: [K, C]`. For benchmarks: the loss's time over this one is its overhead.
pub fn infonce_gemm_floor(qh: &[f32], queue: &[f32], n: usize, c: usize, k: usize) -> Result<()> {
    let shape = InfoNceShape::new(n, c, k, 1.0)?;
    shape.check_inputs(qh.len(), qh.len(), queue.len())?;
    let tasks = stream_tasks(n, k);
    tasks.par_iter().for_each(|&(r0, nr, j0, j1)| {
        let mut acc_t = vec![0.0f32; c * nr];
        let mut s_t = vec![0.0f32; KEY_BLOCK * nr];
        let mut q_t = vec![0.0f32; c * nr];
        for r in 0..nr {
            for ch in 0..c {
                q_t[ch * nr + r] = qh[(r0 + r) * c + ch];
            }
        }
        let mut jb = j0;
        while jb < j1 {
            let nb = KEY_BLOCK.min(j1 - jb);
            let kb = &queue[jb * c..(jb + nb) * c];
            let s_blk = &mut s_t[..nb * nr];
            gemm_nn(s_blk, nr, kb, c, &q_t, nr, nb, nr, c, 1.0, false);
            gemm_tn(&mut acc_t, nr, kb, c, s_blk, nr, c, nr, nb);
            jb += nb;
        }
        std::hint::black_box(&acc_t);
    });
    Ok(())
}

/// Tasks of the key stream: (first row, rows, first key, end key), row blocks x key splits.
fn stream_tasks(n: usize, m_keys: usize) -> Vec<(usize, usize, usize, usize)> {
    let threads = rayon::current_num_threads().max(1);
    let row_blocks = n.div_ceil(ROW_BLOCK);
    let key_blocks = m_keys.div_ceil(KEY_BLOCK);
    let splits = (threads.div_ceil(row_blocks)).clamp(1, key_blocks);
    let per_split = key_blocks.div_ceil(splits) * KEY_BLOCK;
    let mut tasks = Vec::new();
    for rb in 0..row_blocks {
        let r0 = rb * ROW_BLOCK;
        let nr = ROW_BLOCK.min(n - r0);
        for sp in 0..splits {
            let j0 = (sp * per_split).min(m_keys);
            let j1 = ((sp + 1) * per_split).min(m_keys);
            if j0 < j1 {
                tasks.push((r0, nr, j0, j1));
            }
        }
    }
    tasks
}

/// Runs the key stream over tasks (row blocks x key splits) and merges the splits of each row block.
/// Returns the merged states of all N rows and `acc: [N, C]`.
#[allow(clippy::too_many_arguments)]
fn stream_all(qh: &[f32], s_pos: &[f32], keys: QueueView, n: usize, c: usize, m_keys: usize, inv_t: f32) -> (RowStates, Vec<f32>) {
    let tasks = stream_tasks(n, m_keys);
    let partials: Vec<Partial> = tasks.par_iter().map(|&(r0, nr, j0, j1)| stream_keys(qh, s_pos, keys, c, r0, nr, j0, j1, inv_t)).collect();
    let mut states = RowStates::new(n);
    let mut acc = vec![0.0f32; n * c];
    for p in partials {
        for r in 0..p.nr {
            let i = p.r0 + r;
            let (m, l, rank, fa, fb) = merge_row(states.m[i], states.l[i], states.rank[i], p.states.m[r], p.states.l[r], p.states.rank[r]);
            (states.m[i], states.l[i], states.rank[i]) = (m, l, rank);
            for ch in 0..c {
                acc[i * c + ch] = acc[i * c + ch] * fa + p.acc_t[ch * p.nr + r] * fb;
            }
        }
    }
    (states, acc)
}

/// Finishes every row: adds the positive logit to the merged stream state, writes the row loss, and
/// `dq = scale/(T N) · (I - q̂q̂ᵀ)/||q|| · (Σ_j p_j key_j + (p_pos - 1) k̂)`. Returns (Σ row loss in f64, top1, top5).
#[allow(clippy::too_many_arguments)]
fn finish_rows(dq: &mut [f32], row_loss: &mut [f32], qh: &[f32], q_inv_norm: &[f32], kh: &[f32], s_pos: &[f32], states: &RowStates, acc: &[f32], c: usize, grad_scale: f32) -> (f64, u32, u32) {
    let mut total = 0.0f64;
    let (mut top1, mut top5) = (0u32, 0u32);
    for i in 0..states.m.len() {
        let (sm, sl, srank) = (states.m[i], states.l[i], states.rank[i]);
        let s0 = s_pos[i];
        let m = sm.max(s0);
        let w_stream = if sm > MASKED { (sm - m).exp() } else { 0.0 };
        let e0 = (s0 - m).exp();
        let z = sl * w_stream + e0;
        let loss = z.ln() + m - s0;
        row_loss[i] = loss;
        total += loss as f64;
        top1 += (srank < 1) as u32;
        top5 += (srank < 5) as u32;
        let p0 = e0 / z;
        let w = w_stream / z;
        let (q_row, k_row, a_row) = (&qh[i * c..(i + 1) * c], &kh[i * c..(i + 1) * c], &acc[i * c..(i + 1) * c]);
        let d = &mut dq[i * c..(i + 1) * c];
        let mut dot = 0.0f32;
        for ch in 0..c {
            let g = grad_scale * (a_row[ch] * w + (p0 - 1.0) * k_row[ch]);
            d[ch] = g;
            dot += g * q_row[ch];
        }
        project_row(d, q_row, dot, q_inv_norm[i]);
    }
    (total, top1, top5)
}

/// Gradient through `q̂ = q / max(||q||, eps)`: `d = (d - q̂ (d·q̂)) / ||q||` (or `d / eps` when `||q|| <= eps`).
/// `dot = d·q̂`, `inv = 1 / max(||q||, eps)`.
fn project_row(d: &mut [f32], q_row: &[f32], dot: f32, inv: f32) {
    let projected = inv < 1.0 / NORM_EPS; // ||q|| > eps: gradient of x/||x||; else of x/eps
    for (dv, qv) in d.iter_mut().zip(q_row) {
        *dv = if projected { (*dv - qv * dot) * inv } else { *dv * inv };
    }
}

/// Normalised q and k of one loss, and the positive logits.
struct Prepared {
    qh: Vec<f32>,    // q̂: [N, C]
    q_inv: Vec<f32>, // 1 / max(||q||, eps): [N]
    kh: Vec<f32>,    // k̂: [N, C]
    s_pos: Vec<f32>, // q̂_i · k̂_i / T: [N]
}

fn prepare(q: &[f32], k: &[f32], n: usize, c: usize, inv_t: f32) -> Prepared {
    let (mut qh, mut kh) = (vec![0.0; n * c], vec![0.0; n * c]);
    let (mut q_inv, mut k_inv) = (vec![0.0; n], vec![0.0; n]);
    normalize_unchecked(&mut qh, &mut q_inv, q, c);
    normalize_unchecked(&mut kh, &mut k_inv, k, c);
    let mut s_pos = vec![0.0; n];
    row_dots(&mut s_pos, &qh, &kh, c);
    s_pos.iter_mut().for_each(|s| *s *= inv_t);
    Prepared { qh, q_inv, kh, s_pos }
}

/// Fused streaming InfoNCE, forward and backward (MoCo v1/v2).
///
/// `q, k: [N, C]` raw (unnormalised) encoder outputs, `queue: [K, C]`. Writes `dq: [N, C]` (gradient of the
/// mean loss w.r.t. the raw q; k gets none, as in MoCo) and `row_loss: [N]`; returns the mean loss and the
/// acc@1 / acc@5 counts. Never materialises the `N x (1+K)` logits.
pub fn infonce(dq: &mut [f32], row_loss: &mut [f32], q: &[f32], k: &[f32], queue: QueueView, shape: &InfoNceShape) -> Result<InfoNceStats> {
    shape.check_inputs(q.len(), k.len(), queue.len())?;
    shape.check_queue(&queue)?;
    shape.check_outputs(dq.len(), row_loss.len())?;
    let (n, c) = (shape.n, shape.c);
    let inv_t = 1.0 / shape.temperature;
    let Prepared { qh, q_inv, kh, s_pos } = prepare(q, k, n, c, inv_t);
    let (states, acc) = stream_all(&qh, &s_pos, queue, n, c, shape.k, inv_t);
    let (total, top1, top5) = finish_rows(dq, row_loss, &qh, &q_inv, &kh, &s_pos, &states, &acc, c, inv_t / n as f32);
    Ok(InfoNceStats { loss: (total / n as f64) as f32, top1, top5 })
}

/// Logits (f32) one MoCo v3 task keeps (its `[rows, N]` tile): about a core's L2.
const V3_TILE_FLOATS: usize = 256 * 1024;

/// Rows per MoCo v3 task: a multiple of 8 in [8, 256] whose `[rows, N]` logit tile fits [`V3_TILE_FLOATS`].
fn v3_rows(n: usize) -> usize {
    (V3_TILE_FLOATS / n.max(1)).clamp(8, 256) / 8 * 8
}

thread_local! {
    /// Per-thread logit tile of the MoCo v3 tasks, kept across calls (no page faults per call); at most
    /// `max(V3_TILE_FLOATS, 8 N)` floats.
    static V3_TILE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Rows `[r0, r0 + nr)` of one half of MoCo v3's loss, `nr = dq.len() / C`: the `[nr, N]` logits
/// `s = q̂ k̂ᵀ / T` in one GEMM, the exact row softmax in place (`g = p - onehot(i)`; the positive is the
/// diagonal), then `dq = (2/N) (g k̂)` in one GEMM, projected through the normalisation. Returns Σ row loss.
#[allow(clippy::too_many_arguments)]
/// One row block of one half: its summed cross-entropy and its acc@1 / acc@5 counts (rows whose positive, the
/// diagonal, has fewer than 1 / 5 keys strictly above it).
fn v3_rows_task(dq: &mut [f32], s: &mut Vec<f32>, qh: &[f32], q_inv: &[f32], kh: &[f32], n: usize, c: usize, r0: usize, inv_t: f32) -> (f64, u32, u32) {
    let nr = dq.len() / c;
    if s.len() < nr * n {
        s.resize(nr * n, 0.0);
    }
    let s = &mut s[..nr * n]; // fully overwritten by the GEMM below
    let q_blk = &qh[r0 * c..(r0 + nr) * c];
    // s: [nr, N] = q̂_blk [nr, C] · k̂ᵀ / T
    gemm_nt(s, n, q_blk, c, kh, c, nr, n, c, inv_t, false);
    let (mut total, mut top1, mut top5) = (0.0f64, 0u32, 0u32);
    for (r, row) in s.chunks_exact_mut(n).enumerate() {
        let pos = row[r0 + r];
        let above = row.iter().enumerate().filter(|&(j, &v)| j != r0 + r && v > pos).count();
        top1 += u32::from(above < 1);
        top5 += u32::from(above < 5);
        total += softmax_xent_row(row, r0 + r) as f64;
    }
    // dq: [nr, C] = (2/N) g [nr, N] · k̂ [N, C]   (d(2T · mean CE)/dq̂ = 2T / (T N) (...))
    gemm_nn(dq, c, s, n, kh, c, nr, c, n, 2.0 / n as f32, false);
    for (r, d) in dq.chunks_exact_mut(c).enumerate() {
        let q_row = &q_blk[r * c..(r + 1) * c];
        let dq_dot = dot(d, q_row);
        project_row(d, q_row, dq_dot, q_inv[r0 + r]);
    }
    (total, top1, top5)
}

/// Fused MoCo v3 symmetric loss `ctr(q1, k2) + ctr(q2, k1)`, `ctr(q, k) = 2T · CE(q̂ k̂ᵀ / T, arange(N))`,
/// forward and backward, with no `N x N` buffer: both halves run as one parallel pass over row blocks, each
/// keeping a `[rows, N]` logit tile in cache.
///
/// All inputs `[N, C]` raw. Writes `dq1, dq2: [N, C]` and returns the loss.
pub fn moco_v3_loss(dq1: &mut [f32], dq2: &mut [f32], q1: &[f32], q2: &[f32], k1: &[f32], k2: &[f32], shape: &SymmetricShape) -> Result<f32> {
    let [a, b] = moco_v3_loss_halves(dq1, dq2, q1, q2, k1, k2, shape)?;
    Ok(a.loss + b.loss)
}

/// [`moco_v3_loss`] with the statistics of each direction: `[ctr(q1, k2), ctr(q2, k1)]`, each its loss (`2T · CE`)
/// and its in-batch acc@1 / acc@5 counts.
pub fn moco_v3_loss_halves(dq1: &mut [f32], dq2: &mut [f32], q1: &[f32], q2: &[f32], k1: &[f32], k2: &[f32], shape: &SymmetricShape) -> Result<[InfoNceStats; 2]> {
    shape.check(&[("q1", q1.len()), ("q2", q2.len()), ("k1", k1.len()), ("k2", k2.len()), ("dq1", dq1.len()), ("dq2", dq2.len())])?;
    let (n, c, t) = (shape.n, shape.c, shape.temperature);
    if n == 0 || c == 0 {
        let zero = InfoNceStats { loss: 0.0, top1: 0, top5: 0 };
        return Ok([zero, zero]);
    }
    let inv_t = 1.0 / t;
    // q̂, 1/||q||, k̂ of each half: half 0 is ctr(q1, k2), half 1 is ctr(q2, k1)
    let norm = |x: &[f32]| {
        let (mut xh, mut inv) = (vec![0.0; n * c], vec![0.0; n]);
        normalize_unchecked(&mut xh, &mut inv, x, c);
        (xh, inv)
    };
    let halves = [(norm(q1), norm(k2).0), (norm(q2), norm(k1).0)];
    let rows = v3_rows(n);
    let tasks: Vec<(usize, usize, &mut [f32])> =
        dq1.chunks_mut(rows * c).enumerate().map(|(b, d)| (0, b * rows, d)).chain(dq2.chunks_mut(rows * c).enumerate().map(|(b, d)| (1, b * rows, d))).collect();
    let totals: Vec<(usize, (f64, u32, u32))> = tasks
        .into_par_iter()
        .map(|(h, r0, d)| {
            let ((qh, q_inv), kh) = &halves[h];
            (h, V3_TILE.with_borrow_mut(|s| v3_rows_task(d, s, qh, q_inv, kh, n, c, r0, inv_t)))
        })
        .collect();
    let half = |h: usize| -> InfoNceStats {
        let mine = || totals.iter().filter(move |(th, _)| *th == h).map(|(_, v)| v);
        let total: f64 = mine().map(|v| v.0).sum();
        InfoNceStats { loss: (2.0 * t as f64 * total / n as f64) as f32, top1: mine().map(|v| v.1).sum(), top5: mine().map(|v| v.2).sum() }
    };
    Ok([half(0), half(1)])
}

/// The GEMM floor of [`moco_v3_loss`]: per row tile of each half, the same two GEMMs (`s = q̂ k̂ᵀ`, then
/// `dq = s k̂`) with the same routine, tiles, tasks and threads, but no normalisation and no softmax.
/// `q1, q2, k1, k2: [N, C]`. For benchmarks: the loss's time over this one is its overhead.
pub fn moco_v3_gemm_floor(q1: &[f32], q2: &[f32], k1: &[f32], k2: &[f32], shape: &SymmetricShape) -> Result<()> {
    shape.check(&[("q1", q1.len()), ("q2", q2.len()), ("k1", k1.len()), ("k2", k2.len())])?;
    let (n, c) = (shape.n, shape.c);
    let rows = v3_rows(n);
    let tasks: Vec<(&[f32], &[f32], usize)> = (0..n).step_by(rows).flat_map(|r0| [(q1, k2, r0), (q2, k1, r0)]).collect();
    tasks.into_par_iter().for_each(|(q, k, r0)| {
        let nr = rows.min(n - r0);
        let mut dq = vec![0.0f32; nr * c];
        V3_TILE.with_borrow_mut(|s| {
            if s.len() < nr * n {
                s.resize(nr * n, 0.0);
            }
            gemm_nt(s, n, &q[r0 * c..(r0 + nr) * c], c, k, c, nr, n, c, 1.0, false);
            gemm_nn(&mut dq, c, s, n, k, c, nr, c, n, 1.0, false);
        });
        std::hint::black_box(&dq);
    });
    Ok(())
}

impl Infonce for CpuDevice {
    fn infonce(&mut self, dq: &mut [f32], row_loss: &mut [f32], stats: &mut [u32], q: &[f32], k: &[f32], queue: &CpuQueue, shape: &InfoNceShape) -> Result<()> {
        check_stats("infonce", stats.len(), STATS_WORDS)?;
        stats.copy_from_slice(&infonce(dq, row_loss, q, k, queue.view(), shape)?.to_words());
        Ok(())
    }
    fn logits(&mut self, l_pos: &mut [f32], l_neg: &mut [f32], q: &[f32], k: &[f32], queue: &CpuQueue, shape: &LogitsShape) -> Result<()> {
        logits(l_pos, l_neg, q, k, queue.view(), shape)
    }
    fn moco_v3_loss(&mut self, dq1: &mut [f32], dq2: &mut [f32], stats: &mut [u32], q1: &[f32], q2: &[f32], k1: &[f32], k2: &[f32], shape: &SymmetricShape) -> Result<()> {
        check_stats("moco_v3_loss", stats.len(), 2 * STATS_WORDS)?;
        // one block per direction, as the GPUs write them (their f32 sum is moco_v3_loss's, bit for bit)
        let [a, b] = moco_v3_loss_halves(dq1, dq2, q1, q2, k1, k2, shape)?;
        stats[..STATS_WORDS].copy_from_slice(&a.to_words());
        stats[STATS_WORDS..].copy_from_slice(&b.to_words());
        Ok(())
    }
}
